"""Span QA with SQuAD 2.0 unanswerable questions: null answer, τ chosen on validation, predict/serve agree.

A synthetic SQuAD set where half the questions are unanswerable by construction: the context
says who *wrote* something; "who wrote ..." is answered by the name, "who built ..." has no
answer. A tiny BERT (2 layers, 32 wide) learns it in a few epochs.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers  # noqa: F401  (the test extra installs it: a missing one fails, never skips)
from starlette.testclient import TestClient
from typer.testing import CliRunner

from mtlkit.cli import app as cli
from mtlkit.errors import ConfigError, DataError
from mtlkit.nlp.config import parse_nlp_config
from mtlkit.nlp.kinds.span_qa import SpanQATask, best_null_threshold
from mtlkit.nlp.records import QAExample
from mtlkit.nlp.span_metrics import squad_exact_match, squad_f1

from tiny_bert import save_tiny_bert

NAMES = "ada bob cy dan eve fay gus hal ivy jo kim lee".split()
THINGS = "book song poem play letter story".split()


def synthetic_squad(n: int, seed: int, prefix: str) -> dict:
    """``n`` questions, one per paragraph; odd ones unanswerable ("who built" a thing only written)."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        filler = " ".join(rng.choice(["then", "once", "there", "so"]) for _ in range(rng.randint(0, 2)))
        context = f"{filler} {name} wrote the {thing} .".strip()
        if i % 2:
            qa = {"id": f"{prefix}{i}", "question": f"who built the {thing}", "answers": [], "is_impossible": True}
        else:
            qa = {"id": f"{prefix}{i}", "question": f"who wrote the {thing}", "answers": [{"text": name, "answer_start": context.index(f"{name} wrote")}]}
        paragraphs.append({"context": context, "qas": [qa]})
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}


def write_splits(directory, test_seed: int = 2) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, (n, seed) in {"train": (96, 0), "validation": (24, 1), "test": (24, test_seed)}.items():
        path = directory / f"{split}.json"
        path.write_text(json.dumps(synthetic_squad(n, seed, split[:2])))
        files[split] = str(path)
    return files


def qa_config(bert: str, files: dict[str, str], **task) -> dict:
    return {
        "seed": 0, "encoder": {"name": bert},
        "train": {"epochs": 20, "batch_size": 16, "lr": 3e-3, "progress": False, "patience": None, "threads": 1},
        "tasks": [{"name": "qa", "kind": "span_qa", "max_length": 32, "doc_stride": 4, "max_question_length": 8,
                   "data": {**files, "format": "squad"}, **task}],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mtlkit.nlp.run import train_nlp_run

    root = tmp_path_factory.mktemp("squad2")
    files = write_splits(root / "data")
    text = " ".join(NAMES + THINGS + ["who built wrote the then once there so ."])
    (root / "words.txt").write_text(text + "\n")
    save_tiny_bert(root / "bert", [(root / "words.txt", 1)], dropout=0.0)
    torch.set_num_threads(1)
    summary = train_nlp_run(parse_nlp_config(qa_config(str(root / "bert"), files, allow_unanswerable=True)), root / "run")
    return root, files, summary


# -- units ---------------------------------------------------------------------------------------
def test_squad2_metrics_count_a_null_prediction_right_only_for_a_null_gold():
    assert squad_exact_match("", []) == squad_f1("", []) == 1.0
    assert squad_exact_match("ada", []) == squad_f1("ada", []) == 0.0
    assert squad_exact_match("", ["ada"]) == squad_f1("", ["ada"]) == 0.0


def test_best_null_threshold_maximises_f1_and_never_splits_ties():
    diff = torch.tensor([5.0, 2.0, 2.0, -3.0])
    f1 = torch.tensor([0.0, 1.0, 0.0, 1.0])
    null = torch.tensor([True, False, True, False])
    tau = best_null_threshold(diff, f1, null)
    assert 2.0 <= tau < 5.0  # null only the first: 1 + 1 + 0 + 1 (the tie at 2.0 cannot be split)
    chosen = diff > tau
    assert chosen.tolist() == [True, False, False, False]
    assert best_null_threshold(torch.tensor([1.0, 2.0]), torch.ones(2), torch.zeros(2, dtype=torch.bool)) > 2.0  # never null
    assert best_null_threshold(torch.tensor([1.0, 2.0]), torch.zeros(2), torch.ones(2, dtype=torch.bool)) < 1.0  # always null
    assert best_null_threshold(torch.tensor([float("inf"), 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([True, False])) > 0.0


def test_null_threshold_decides_by_null_minus_best_span_per_question(tmp_path):
    from transformers import BertTokenizerFast

    task = SpanQATask(name="qa", max_length=32, doc_stride=4, max_question_length=8, allow_unanswerable=True, null_threshold=1.0)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "who", "wrote", "ada", "it", "."]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    example = QAExample("q", "who wrote it", "ada wrote it .", ())
    table = task.featurize([example], tokenizer)  # a batch of one question, one window
    assert len(table) == 1
    ctx = int((table.extras["offsets"][0, :, 0] >= 0).nonzero()[0])
    logits = torch.zeros(1, table.inputs["input_ids"].shape[1], 3)
    logits[0, ctx, 0] = logits[0, ctx, 1] = 2.0  # best span "ada": 4
    logits[0, 0, 0] = logits[0, 0, 1] = 2.4  # null 4.8: 0.8 above, not over τ = 1
    assert task.predict_records(logits, table, [example]) == [{"id": "q", "answer": "ada", "answerable": True}]
    logits[0, 0, 0] = 2.6  # null 5.0: 1.0 above, still not over
    assert task.predict_records(logits, table, [example])[0]["answerable"]
    logits[0, 0, 0] = 2.7  # 1.1 above τ: null
    assert task.predict_records(logits, table, [example]) == [{"id": "q", "answer": "", "answerable": False}]
    assert "answerable" not in SpanQATask(name="qa", max_length=32, doc_stride=4, max_question_length=8).predict_records(logits, table, [example])[0]


# -- bad input -----------------------------------------------------------------------------------
def test_null_threshold_without_allow_unanswerable_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="allow_unanswerable") as error:
        parse_nlp_config(qa_config("bert", {"train": "x.json"}, null_threshold=0.5))
    assert "\n" not in str(error.value)


def test_unanswerable_question_without_the_option_is_a_one_line_data_error_before_the_run_dir(tmp_path):
    from mtlkit.nlp.run import train_nlp_run

    files = write_splits(tmp_path / "data")
    (tmp_path / "words.txt").write_text(" ".join(NAMES + THINGS) + "\n")
    save_tiny_bert(tmp_path / "bert", [(tmp_path / "words.txt", 1)])
    with pytest.raises(DataError, match="allow_unanswerable: true on task 'qa'") as error:
        train_nlp_run(parse_nlp_config(qa_config(str(tmp_path / "bert"), files)), tmp_path / "run")
    assert "\n" not in str(error.value) and "tr1" in str(error.value)
    assert not (tmp_path / "run").exists()


# -- a trained run -------------------------------------------------------------------------------
def _f1(records, examples):
    gold = {ex.id: [a.text for a in ex.answers] for ex in examples}
    return sum(squad_f1(r["answer"], gold[r["id"]]) for r in records) / len(records)


def test_trained_model_beats_always_answer_and_always_null_on_test_f1(trained):
    from mtlkit.nlp.evaluation import predict_task
    from mtlkit.nlp.run import load_nlp_run

    root, _, summary = trained
    tau = summary["calibration"]["qa"]["null_threshold"]
    assert json.loads((root / "run" / "calibration.json").read_text()) == {"qa": {"null_threshold": tau}}
    prepared, model = load_nlp_run(root / "run")
    task = prepared.tasks[0]
    assert task.null_threshold == tau
    table, examples = prepared.tables["test"]["qa"], prepared.examples["qa"]["test"]
    outputs = predict_task(model, task, table, 8)[0]
    model_f1 = _f1(task.predict_records(outputs, table, examples), examples)
    answer_f1 = _f1(task.model_copy(update={"null_threshold": float("inf")}).predict_records(outputs, table, examples), examples)
    null_f1 = _f1(task.model_copy(update={"null_threshold": -float("inf")}).predict_records(outputs, table, examples), examples)
    assert null_f1 == pytest.approx(0.5)  # half the test questions are unanswerable
    assert model_f1 == pytest.approx(summary["test"]["qa"]["squad_f1"])
    assert model_f1 > max(answer_f1, null_f1) + 0.15, (model_f1, answer_f1, null_f1)


def test_threshold_is_chosen_on_validation_never_test(trained, tmp_path):
    """The stored τ is validation's best, and another test split leaves τ and validation scores unchanged."""
    from mtlkit.nlp.evaluation import predict_task
    from mtlkit.nlp.run import load_nlp_run, train_nlp_run

    root, files, summary = trained
    prepared, model = load_nlp_run(root / "run", {"qa": {"null_threshold": None}})
    task = prepared.tasks[0]
    table = prepared.tables["validation"]["qa"]
    outputs = predict_task(model, task, table, 8)[0]
    assert task.calibrate(outputs, table, prepared.examples["qa"]["validation"]) == summary["calibration"]["qa"]
    other = {**files, "test": write_splits(tmp_path / "data", test_seed=7)["test"]}
    again = train_nlp_run(parse_nlp_config(qa_config(str(root / "bert"), other, allow_unanswerable=True)), tmp_path / "run")
    assert again["calibration"] == summary["calibration"] and again["validation"] == summary["validation"]


def test_predict_and_serve_give_the_same_null_answers_batch_of_one(trained, tmp_path):
    from mtlkit.serve import create_app

    root, _, _ = trained
    questions = synthetic_squad(6, seed=11, prefix="p")
    path = tmp_path / "ask.json"
    path.write_text(json.dumps(questions))
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(cli, ["predict", str(root / "run"), str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    predicted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["answerable"] for r in predicted] == [r["answer"] != "" for r in predicted]
    assert not any(r["answerable"] for r in predicted[1::2])  # the unanswerable questions come out null
    client = TestClient(create_app(root / "run", max_batch=8))
    for paragraph, record in zip(questions["data"][0]["paragraphs"], predicted):
        qa = paragraph["qas"][0]
        response = client.post("/predict", json={"task": "qa", "inputs": [{"id": qa["id"], "question": qa["question"],
                                                                           "context": paragraph["context"]}]})
        assert response.status_code == 200, response.text
        served = response.json()["predictions"][0]
        assert (served["id"], served["answer"], served["answerable"]) == (record["id"], record["answer"], record["answerable"])


def test_onnx_export_carries_the_threshold_and_serves_the_same_null_answers(trained):
    from mtlkit.serve import create_app

    root, _, summary = trained
    result = CliRunner().invoke(cli, ["export", str(root / "run"), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    directory = root / "run" / "export" / "onnx"
    definition = json.loads((directory / "manifest.json").read_text())["tasks"][0]["definition"]
    assert definition["null_threshold"] == summary["calibration"]["qa"]["null_threshold"]
    inputs = [{"id": qa["id"], "question": qa["question"], "context": p["context"]}
              for p in synthetic_squad(6, seed=12, prefix="e")["data"][0]["paragraphs"] for qa in p["qas"]]
    answers = []
    for served in (root / "run", directory):
        response = TestClient(create_app(served, max_batch=8)).post("/predict", json={"task": "qa", "inputs": inputs})
        assert response.status_code == 200, response.text
        answers.append([(r["answer"], r["answerable"]) for r in response.json()["predictions"]])
    assert answers[0] == answers[1] and [a for _, a in answers[0]] == [True, False] * 3
