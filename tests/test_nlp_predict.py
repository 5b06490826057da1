"""`mtlkit predict` on NLP runs: one record per input example, from the run's best checkpoint."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import transformers  # noqa: F401  (the test extra installs it: a missing one fails, never skips)
from typer.testing import CliRunner  # noqa: E402

from mtlkit.cli import app  # noqa: E402
from mtlkit.errors import ConfigError  # noqa: E402
from mtlkit.nlp.config import parse_nlp_config  # noqa: E402
from mtlkit.nlp.evaluation import predict_task  # noqa: E402
from mtlkit.nlp.examples import RankingExample  # noqa: E402
from mtlkit.nlp.kinds.mlm import MaskedLMTask  # noqa: E402
from mtlkit.nlp.kinds.ranking import RankingTask  # noqa: E402
from mtlkit.nlp.kinds.relation import RelationTask  # noqa: E402
from mtlkit.nlp.kinds.span_ner import SpanNERTask  # noqa: E402
from mtlkit.nlp.kinds.span_qa import SpanQATask  # noqa: E402
from mtlkit.nlp.model import NLPMultiTaskModel  # noqa: E402
from mtlkit.nlp.readers import read  # noqa: E402
from mtlkit.nlp.records import Answer, Entity, IESentence, QAExample  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402
from tiny_bert import head_rows, save_tiny_bert  # noqa: E402

NLP = SHARED_DATA / "nlp"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A WordPiece vocabulary from the first rows of the shared files and a 2-layer BERT, saved together."""
    root = tmp_path_factory.mktemp("tiny_bert")
    tokenizer, bert = save_tiny_bert(root, [(NLP / "sst2" / "train.tsv", 60), (NLP / "stsb" / "sts-train.tsv", 40),
                                            (NLP / "wnut17" / "wnut17train.conll", 200)])
    return root, tokenizer, bert


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
    """A 1-epoch run of sst2 (classification), stsb (regression), ner (tagging) and a masked-LM auxiliary."""
    from mtlkit.nlp.run import train_nlp_run

    root, _, _ = tiny
    rows = {"train": 24, "validation": 8}
    config = parse_nlp_config({
        "encoder": {"name": str(root)},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "patience": None},
        "tasks": [
            {"name": "sst2", "kind": "classification", "max_length": 24,
             "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                      "format": "glue_tsv", "max_rows": rows}},
            {"name": "stsb", "kind": "regression", "max_length": 32,
             "data": {"train": str(NLP / "stsb" / "sts-train.tsv"), "format": "sts", "max_rows": rows}},
            {"name": "ner", "kind": "tagging", "max_length": 48,
             "data": {"train": str(NLP / "wnut17" / "wnut17train.conll"),
                      "validation": str(NLP / "wnut17" / "emerging.dev.conll"), "format": "conll", "max_rows": rows}},
            {"name": "lm", "kind": "mlm", "max_length": 24, "data": {"from_tasks": ["sst2"]}},
        ]})
    path = tmp_path_factory.mktemp("runs") / "nlp"
    train_nlp_run(config, path)
    return path


@pytest.fixture(scope="module")
def loaded(run_dir):
    """The run as evaluation loads it (load_nlp_run): the reference the CLI's predictions must match."""
    from mtlkit.nlp.run import load_nlp_run

    prepared, model = load_nlp_run(run_dir)
    return {t.name: t for t in prepared.tasks}, prepared.tokenizer, model


def _reference(loaded, name, fmt, path):
    tasks, tokenizer, model = loaded
    task = tasks[name]
    table = task.featurize(read(fmt, path), tokenizer)
    outputs, _, _ = predict_task(model, task, table, batch_size=3)
    return task, table, outputs


def _predict(*args):
    result = runner.invoke(app, ["predict", *map(str, args)])
    return result


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def sst2_rows(tmp_path):
    path = tmp_path / "new.tsv"
    path.write_text("".join(head_rows(NLP / "sst2" / "dev.tsv", 6)))  # header + 5 rows
    return path


def test_classification_records_match_predict_task(run_dir, loaded, sst2_rows, tmp_path):
    out = tmp_path / "sst2.jsonl"
    result = _predict(run_dir, sst2_rows, "--task", "sst2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote 5 rows" in result.output
    records = _jsonl(out)
    task, _, outputs = _reference(loaded, "sst2", "glue_tsv", sst2_rows)
    assert len(records) == 5 and {r["task"] for r in records} == {"sst2"}
    assert [r["label"] for r in records] == [task.labels[i] for i in outputs.argmax(-1).tolist()]
    for record, p in zip(records, torch.softmax(outputs.float(), -1).tolist()):
        assert list(record["probabilities"]) == task.labels and record["label"] in task.labels
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert list(record["probabilities"].values()) == pytest.approx(p, abs=1e-5)


def test_csv_for_classification_and_regression(run_dir, loaded, sst2_rows, tmp_path):
    out = tmp_path / "sst2.csv"
    assert _predict(run_dir, sst2_rows, "--task", "sst2", "--out", out).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and list(rows[0]) == ["task", "label", "p_0", "p_1"]
    assert all(float(r["p_0"]) + float(r["p_1"]) == pytest.approx(1.0, abs=1e-5) for r in rows)

    sts = tmp_path / "sts.tsv"
    sts.write_text("".join(head_rows(NLP / "stsb" / "sts-dev.tsv", 4)))
    out = tmp_path / "stsb.csv"
    result = _predict(run_dir, sts, "--task", "stsb", "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    _, _, outputs = _reference(loaded, "stsb", "sts", sts)
    assert [float(r["value"]) for r in rows] == pytest.approx(outputs.float().tolist(), abs=1e-5)


def test_tagging_records_one_tag_per_token(run_dir, loaded, tmp_path):
    blocks = (NLP / "wnut17" / "emerging.dev.conll").read_text(encoding="utf-8").split("\n\n")[:3]
    blocks[0] = blocks[0].replace("\tO", "\tB-alien", 1)  # a tag the run never saw: gold is not read at prediction
    data = tmp_path / "new.conll"
    data.write_text("\n\n".join(blocks) + "\n")
    out = tmp_path / "ner.jsonl"
    result = _predict(run_dir, data, "--task", "ner", "--out", out)
    assert result.exit_code == 0, result.output
    records = _jsonl(out)
    task = loaded[0]["ner"]
    assert len(records) == 3
    for record, block in zip(records, blocks):
        assert record["tokens"] == [line.split("\t")[0] for line in block.strip().splitlines()]
        assert len(record["tags"]) == len(record["tokens"]) and set(record["tags"]) <= set(task.labels)

    csv_out = tmp_path / "ner.csv"
    result = _predict(run_dir, data, "--task", "ner", "--out", csv_out)
    assert result.exit_code == 2 and ".jsonl" in result.output and not csv_out.exists()


def test_task_choice_errors(run_dir, sst2_rows, tmp_path):
    result = _predict(run_dir, sst2_rows)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--task" in result.output and all(name in result.output for name in ("sst2", "stsb", "ner"))
    assert "lm" not in result.output.split(":")[-1]  # masked-LM is no choice
    result = _predict(run_dir, sst2_rows, "--task", "lm")
    assert result.exit_code == 2 and "nothing to predict" in result.output
    result = _predict(run_dir, sst2_rows, "--task", "nope")
    assert result.exit_code == 2 and "no task 'nope'" in result.output
    result = _predict(run_dir, sst2_rows, "--task", "sst2", "--format", "nope")
    assert result.exit_code == 2 and "unknown format 'nope'" in result.output
    # --keep is tabular; --task/--format on a tabular (here: no NLP) run directory is rejected
    assert "--keep" in _predict(run_dir, sst2_rows, "--task", "sst2", "--keep", "id").output
    result = _predict(tmp_path, sst2_rows, "--task", "sst2")
    assert result.exit_code == 2 and "NLP runs" in result.output


def test_failure_leaves_the_output_untouched(run_dir, tmp_path):
    out = tmp_path / "kept.jsonl"
    out.write_text("old\n")
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nonly one field here\n")
    result = _predict(run_dir, bad, "--task", "sst2", "--out", out)
    assert result.exit_code == 2 and "bad.tsv:2" in result.output
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_span_and_ranking_kinds_write_one_record_per_example(tiny):
    """The kinds not trained above, on an untrained model: record shapes and the empty-relation case."""
    _, tokenizer, bert = tiny
    qa = SpanQATask(name="qa", max_length=48, doc_stride=8, max_question_length=8)
    ner = SpanNERTask(name="ents", labels=["Method", "Task"], max_span_width=3, width_dim=8)
    rel = RelationTask(name="rel", labels=["USED-FOR"])
    rank = RankingTask(name="rank", candidates=3)
    model = NLPMultiTaskModel({"shared": bert}, [qa, ner, rel, rank]).eval()

    def records(task, examples):
        table = task.featurize(examples, tokenizer)
        outputs = predict_task(model, task, table, batch_size=2)[0] if len(table) else None  # as predict_nlp_run does
        return task.predict_records(outputs, table, examples)

    context = "a man is playing a flute . " * 6
    questions = [QAExample("q1", "who is playing ?", context, (Answer("a man", 0),)), QAExample("q2", "what ?", "the cat sat", ())]
    assert [(r["id"], type(r["answer"])) for r in records(qa, questions)] == [("q1", str), ("q2", str)]

    sentences = [IESentence(("a", "man", "plays", "a", "flute"), (Entity(0, 1, "Method"), Entity(4, 4, "Task"))),
                 IESentence(("the", "cat"), (Entity(1, 1, "Task"),))]
    found = records(ner, sentences)
    assert [r["tokens"] for r in found] == [list(s.tokens) for s in sentences]
    for record in found:
        for e in record["entities"]:
            assert e["type"] in ner.labels and e["text"] == " ".join(record["tokens"][e["start"]: e["end"] + 1])
    related = records(rel, sentences)
    assert len(related) == 2 and related[1]["relations"] == []  # one entity: no pair, still a record
    for r in related[0]["relations"]:
        assert set(r) == {"subject", "subject_type", "object", "object_type", "type"} and r["type"] == "USED-FOR"
    assert records(rel, sentences[1:]) == [{"tokens": ["the", "cat"], "relations": []}]  # no table rows at all

    queries = [RankingExample("a man", ("a man plays", "a plane", "cat")), RankingExample("plane", ("air plane", "cat"))]
    ranked = records(rank, queries)
    assert [len(r["scores"]) for r in ranked] == [3, 2]
    assert all(r["scores"][r["best"]] == max(r["scores"]) for r in ranked)

    with pytest.raises(ConfigError, match="nothing to predict|no predictions"):
        MaskedLMTask(name="lm").predict_records(None, None, [])
