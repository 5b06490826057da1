"""NLP core: sequence-level kinds, encoder sharing, MMoE mixing, samplers, readers, config and a full tiny run."""

from __future__ import annotations

import json

import pytest
import torch
import transformers  # noqa: F401  (the test extra installs it: a missing one fails, never skips)
from typer.testing import CliRunner  # noqa: E402

from mtlkit.cli import app  # noqa: E402
from mtlkit.data.batch import EncodedTable  # noqa: E402
from mtlkit.errors import ConfigError, DataError  # noqa: E402
from mtlkit.nlp.config import parse_nlp_config  # noqa: E402
from mtlkit.nlp.examples import RankingExample, TextExample  # noqa: E402
from mtlkit.nlp.kinds.classification import ClassificationTask  # noqa: E402
from mtlkit.nlp.kinds.domain import DomainTask, reverse_gradient  # noqa: E402
from mtlkit.nlp.kinds.mlm import MaskedLMTask  # noqa: E402
from mtlkit.nlp.kinds.ranking import RankingTask  # noqa: E402
from mtlkit.nlp.kinds.regression import RegressionTask  # noqa: E402
from mtlkit.nlp.model import MixingSpec, NLPMultiTaskModel, trim_padding  # noqa: E402
from mtlkit.nlp.readers.glue import read_glue_tsv, read_mrpc, read_sts  # noqa: E402
from mtlkit.nlp.readers.ranking import read_ranking_tsv  # noqa: E402
from mtlkit.nlp.sampling import SamplingSpec, TaskSampler, capped, probabilities  # noqa: E402
from nlp_resume import train_whole_and_resumed, validation_log

from conftest import SHARED_DATA  # noqa: E402
from tiny_bert import save_tiny_bert  # noqa: E402

NLP = SHARED_DATA / "nlp"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A WordPiece vocabulary from the first rows of the shared files and a 2-layer BERT, saved together."""
    root = tmp_path_factory.mktemp("tiny_bert")
    tokenizer, bert = save_tiny_bert(root, [(NLP / "sst2" / "train.tsv", 60), (NLP / "rte" / "train.tsv", 40),
                                            (NLP / "stsb" / "sts-train.tsv", 40), (NLP / "rte" / "val.tsv", 20)])
    return root, tokenizer, bert


def _model(bert, tasks, mixing=None, own=()):
    import copy

    encoders = {"shared": bert, **{f"own_{name}": copy.deepcopy(bert) for name in own}}
    return NLPMultiTaskModel(encoders, tasks, mixing=mixing)


PAIRS = [TextExample("a man is playing a flute .", "a man plays a flute .", 3.8, "main-captions"),
         TextExample("a plane is taking off .", "an air plane is taking off .", 5.0, "main-news"),
         TextExample("the cat sat", "a dog ran far away from the city", 0.5, "main-captions")]


def _kinds(tokenizer):
    """One task of each kind with its featurized table (a few rows)."""
    single = [TextExample("it 's a charming journey", label="1"), TextExample("bleak and desperate", label="0"),
              TextExample("kids , spirit", label="1")]
    ranking = [RankingExample("a man is playing", ("a man plays a flute", "a plane", "bleak")), RankingExample("plane", ("air plane", "cat"), 1)]
    ranking = [RankingExample(r.query, r.candidates, 0 if r.label is None else r.label) for r in ranking]
    tasks = {
        "sst2": ClassificationTask(name="sst2", metrics=["accuracy", "f1", "mcc"], max_length=16).resolve(single),
        "pair": ClassificationTask(name="pair", labels=["0", "1"], max_length=24),
        "sts": RegressionTask(name="sts", max_length=24),
        "rank": RankingTask(name="rank", max_length=16).resolve(ranking),
        "lm": MaskedLMTask(name="lm", probability=0.5, max_length=16),
        "genre": DomainTask(name="genre", grl_lambda=0.5, max_length=24).resolve(PAIRS),
    }
    pair_rows = [TextExample(p.text, p.text_pair, str(int(p.label > 2))) for p in PAIRS]
    data = {"sst2": single, "pair": pair_rows, "sts": PAIRS, "rank": ranking, "lm": single, "genre": PAIRS}
    tables = {name: task.featurize(data[name], tokenizer) for name, task in tasks.items()}
    return tasks, tables


# -- heads and losses ------------------------------------------------------------------------
def test_each_head_shapes_and_loss_batch_of_one_and_empty_mask(tiny):
    _, tokenizer, bert = tiny
    tasks, tables = _kinds(tokenizer)
    model = _model(bert, list(tasks.values()))
    expected = {"sst2": (2,), "pair": (2,), "sts": (), "rank": (3,), "genre": (2,)}
    for name, task in tasks.items():
        table = tables[name]
        for rows in (slice(0, len(table)), slice(0, 1)):
            batch = task.transform_batch(table.take(rows), torch.Generator().manual_seed(1))
            out = model(batch.inputs, (name,))
            assert list(out) == [name]
            n = batch.size
            if name == "lm":  # only the chosen positions are decoded
                assert out[name].shape == (int(batch.inputs["tok:mlm_positions"].sum()), bert.config.vocab_size)
            else:
                assert out[name].shape == (n, *expected[name])
            loss = task.compute_loss(out[name], batch.targets[name], None, batch.masks[name])
            assert loss.dim() == 0 and torch.isfinite(loss)
            empty = task.compute_loss(out[name], batch.targets[name], None, torch.zeros(n, dtype=torch.bool))
            assert empty.item() == 0.0
            model.zero_grad()
            empty.backward()
            assert all(p.grad is None or not p.grad.isnan().any() for p in model.parameters())
    metrics = tasks["sst2"].evaluate(model(tables["sst2"].inputs, ("sst2",))["sst2"].detach(), tables["sst2"], [])
    assert set(metrics) == {"accuracy", "f1", "mcc"}


def test_mlm_takes_the_text_of_any_readers_records(tiny):
    """Masked LM over a tagging file's sentences or a QA file's contexts reads the same text as a plain row;
    a record with no text is a one-line config error naming the task, not an AttributeError."""
    from mtlkit.nlp.records import Answer, QAExample, TaggedSentence

    _, tokenizer, _ = tiny
    task = MaskedLMTask(name="lm", max_length=16)
    plain = task.featurize([TextExample("a man is playing a flute ."), TextExample("bleak and desperate")], tokenizer)
    records = [TaggedSentence(("a", "man", "is", "playing", "a", "flute", "."), ("O",) * 7),
               QAExample("q1", "who plays ?", "bleak and desperate", (Answer("bleak", 0),))]
    mixed = task.featurize(records, tokenizer)
    assert torch.equal(mixed.inputs["input_ids"], plain.inputs["input_ids"])
    assert torch.equal(mixed.targets["lm"], plain.targets["lm"])

    class NoText:
        source = "file.jsonl:3"

    with pytest.raises(ConfigError, match="task 'lm'.*NoText holds no text"):
        task.featurize([NoText()], tokenizer)


def test_mlm_masking_rates_deterministic_and_tied_head(tiny):
    _, tokenizer, bert = tiny
    task = MaskedLMTask(name="lm")
    task.set_vocabulary(mask_token_id=4, vocab_size=1000)
    ids = torch.randint(5, 1000, (400, 50))
    from mtlkit.data.batch import Batch

    batch = Batch({"input_ids": ids, "tok:mlm_positions": torch.zeros_like(ids, dtype=torch.bool)}, {"lm": ids.clone()},
                  {"lm": torch.ones(400, dtype=torch.bool)})
    a = task.transform_batch(batch, torch.Generator().manual_seed(3))
    b = task.transform_batch(batch, torch.Generator().manual_seed(3))
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])  # a function of the generator's seed
    chosen = a.inputs["tok:mlm_positions"]
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    new = a.inputs["input_ids"][chosen]
    assert abs((new == 4).float().mean().item() - 0.8) < 0.02
    assert abs((new == ids[chosen]).float().mean().item() - 0.1) < 0.02  # unchanged (random hits the same id ~0.1 %)
    head = MaskedLMTask(name="lm").build_head(32)
    head.bind_encoder(bert)
    assert head.tied and head._tied[0].weight is bert.get_input_embeddings().weight
    assert all(p is not bert.get_input_embeddings().weight for p in head.parameters())


def test_gradient_reversal_flips_sign_and_scales_by_lambda():
    x = torch.randn(4, 3, requires_grad=True)
    weights = torch.randn(4, 3)
    (reverse_gradient(x, 0.3) * weights).sum().backward()
    assert torch.allclose(x.grad, -0.3 * weights)
    task = DomainTask(name="d", labels=["a", "b"], grl_lambda=2.0, head={"dropout": 0.0})
    head = task.build_head(3)
    pooled = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, 1, 1, 0])
    task.compute_loss(head(None, pooled, {}), target).backward()
    reversed_grad = pooled.grad.clone()
    pooled.grad = None
    task.compute_loss(head.classifier(None, pooled, {}), target).backward()  # the same classifier without R_λ
    assert torch.allclose(reversed_grad, -2.0 * pooled.grad)
    plain = task.model_copy(update={"adversarial": False}).build_head(3)  # the ablation: no reversal
    plain.load_state_dict(head.state_dict())
    pooled.grad = None
    task.compute_loss(plain(None, pooled, {}), target).backward()
    assert torch.allclose(-2.0 * pooled.grad, reversed_grad)


def test_annealed_gradient_reversal_follows_ganins_schedule(tiny):
    """λ_p = λ·(2/(1+exp(−10p)) − 1): silent at the start, λ·0.99991 at the end (Ganin & Lempitsky 2015, §5.2.1)."""
    import math

    _, _, bert = tiny
    task = DomainTask(name="d", labels=["a", "b"], grl_lambda=0.5, grl_schedule="ganin", head={"dropout": 0.0})
    model = NLPMultiTaskModel({"shared": bert}, [task])
    head = model.heads["d"]
    pooled, target = torch.randn(4, model.hidden_size, requires_grad=True), torch.tensor([0, 1, 1, 0])
    grads = []
    for progress in (0.0, 0.5, 1.0):
        model.set_training_progress(progress)  # what the trainer calls before every step
        pooled.grad = None
        task.compute_loss(head(None, pooled, {}), target).backward()
        grads.append(pooled.grad.clone())
    pooled.grad = None
    task.compute_loss(head.classifier(None, pooled, {}), target).backward()  # the classifier's own gradient
    assert torch.count_nonzero(grads[0]) == 0
    for progress, grad in zip((0.5, 1.0), grads[1:]):
        lam = 0.5 * (2 / (1 + math.exp(-10 * progress)) - 1)
        assert torch.allclose(grad, -lam * pooled.grad, atol=1e-7)


# -- model: sharing, mixing, trimming ------------------------------------------------------------
def test_shared_and_own_encoders_are_separate_parameters(tiny):
    _, tokenizer, bert = tiny
    tasks, tables = _kinds(tokenizer)
    a, b = tasks["sst2"], tasks["pair"].model_copy(update={"encoder": "own"})
    model = _model(bert, [a, b], own=["pair"])
    shared, own = model.encoders["shared"], model.encoders["own_pair"]
    assert all(p is not q and torch.equal(p, q) for p, q in zip(shared.parameters(), own.parameters()))  # same weights, copies
    shared_ids = {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in shared.parameters()} <= shared_ids
    assert not shared_ids & {id(p) for p in own.parameters()}
    assert {id(p) for p in own.parameters()} <= {id(p) for p in model.task_parameters("pair")}
    before = [p.detach().clone() for p in shared.parameters()]
    batch = tables["pair"].take(slice(0, 3))
    model.zero_grad()
    b.compute_loss(model(batch.inputs, ("pair",))["pair"], batch.targets["pair"], None, batch.masks["pair"]).backward()
    assert all(p.grad is None for p in shared.parameters())  # task "pair" never touches the shared encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own.parameters())
    assert all(torch.equal(x, p) for x, p in zip(before, shared.parameters()))


def test_mmoe_mixing_gates_sum_to_one_and_token_tasks_skip_it(tiny):
    _, tokenizer, bert = tiny
    tasks, tables = _kinds(tokenizer)
    chosen = [tasks["sst2"], tasks["sts"], tasks["lm"]]
    model = _model(bert, chosen, MixingSpec(backbone="mmoe", options={"experts": 3, "expert_hidden": [16]}))
    assert model.mixed_names == ["sst2", "sts"] and model.mix_projection is not None  # 16 → hidden 32
    model.eval()
    gates = model.gate_weights(tables["sst2"].inputs)
    assert set(gates) == {"sst2", "sts"}
    for weights in gates.values():
        assert weights.shape == (3, 3) and torch.allclose(weights.sum(-1), torch.ones(3))
    out = model(tables["sts"].inputs, ("sts", "sst2"))
    assert out["sts"].shape == (3,) and out["sst2"].shape == (3, 2)
    assert {id(p) for p in model.mixing.parameters()} <= {id(p) for p in model.shared_parameters()}


def test_trim_padding_cuts_text_and_tok_inputs_only():
    inputs = {"input_ids": torch.tensor([[2, 7, 3, 0, 0], [2, 3, 0, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]),
              "tok:x": torch.ones(2, 5), "candidate_mask": torch.ones(2, 5, dtype=torch.bool)}
    trimmed = trim_padding(inputs)
    assert trimmed["input_ids"].shape == (2, 3) and trimmed["tok:x"].shape == (2, 3) and trimmed["candidate_mask"].shape == (2, 5)


# -- samplers ----------------------------------------------------------------------------------
def _tables(sizes):
    return {name: EncodedTable({"x": torch.arange(n).unsqueeze(1)}, {name: torch.zeros(n)}, {name: torch.ones(n, dtype=torch.bool)})
            for name, n in sizes.items()}


def _frequencies(sampler, epoch):
    counts = torch.bincount(torch.tensor([step[0] for step in sampler.plan(epoch)]), minlength=len(sampler.names))
    return (counts / counts.sum()).tolist()


def test_sampler_frequencies_match_their_formulas():
    sizes = {"big": 9000, "mid": 1000, "small": 100}
    tables = _tables(sizes)
    n = torch.tensor([9000.0, 1000.0, 100.0])
    steps = 40_000
    cases = [
        (SamplingSpec(strategy="uniform", steps=steps), 0, torch.ones(3) / 3),
        (SamplingSpec(strategy="temperature", temperature=2.0, steps=steps), 0, n.sqrt() / n.sqrt().sum()),
        (SamplingSpec(strategy="temperature", temperature=1.0, cap=0.5, steps=steps), 0, None),
        (SamplingSpec(strategy="annealed", steps=steps), 0, n / n.sum()),
        (SamplingSpec(strategy="annealed", steps=steps), 4, n**0.2 / (n**0.2).sum()),  # α = 1 − 0.8·4/4
    ]
    for spec, epoch, formula in cases:
        sampler = TaskSampler(tables, 10, spec, seed=1, epochs=5)
        expected = torch.tensor(list(probabilities(spec, sizes, epoch, 5).values()))
        if formula is not None:
            assert torch.allclose(expected.float(), formula, atol=1e-6)
        assert torch.allclose(torch.tensor(_frequencies(sampler, epoch)), expected.float(), atol=0.01), spec
    capped_p = capped(n.double(), 0.5)
    assert capped_p[0].item() == pytest.approx(0.5) and capped_p[1] / capped_p[2] == pytest.approx(10.0)
    with pytest.raises(ConfigError, match="cap"):
        capped(n, 0.2)  # below 1/3
    proportional = TaskSampler(tables, 10, SamplingSpec(strategy="proportional"))
    assert torch.bincount(torch.tensor([s[0] for s in proportional.plan(0)])).tolist() == [900, 100, 10]  # every batch once
    first = TaskSampler(tables, 10, SamplingSpec(strategy="auxiliary_first", main=["small"], auxiliary_ratio=3.0))
    plan = [s[0] for s in first.plan(0)]
    assert plan[-10:] == [2] * 10 and len(plan) == 10 + 30 and 2 not in plan[:-10]
    assert len(TaskSampler(tables, 10, SamplingSpec(strategy="round"))) == 900


def test_sampler_is_deterministic_and_resumes_mid_epoch():
    tables = _tables({"a": 50, "b": 30})
    sampler = TaskSampler(tables, 8, SamplingSpec(strategy="temperature", temperature=3.0), seed=4)
    rows = lambda steps: [(s[0].tasks[0], s[0].inputs["x"][:, 0].tolist()) for s in steps]  # noqa: E731
    full = rows(sampler.epoch(2))
    assert rows(sampler.epoch(2, start_step=5)) == full[5:]
    assert rows(TaskSampler(tables, 8, SamplingSpec(strategy="temperature", temperature=3.0), seed=4).epoch(2)) == full
    assert rows(sampler.epoch(3)) != full
    round_robin = TaskSampler(tables, 8, SamplingSpec(strategy="round"))
    assert all([b.tasks[0] for b in step] == ["a", "b"] for step in round_robin.epoch(0))


# -- readers -----------------------------------------------------------------------------------
def test_readers_on_the_shared_files(tmp_path):
    sst2 = read_glue_tsv(NLP / "sst2" / "dev.tsv")
    assert len(sst2) == 6735 and sst2[0].label == "1" and sst2[0].text_pair is None
    columns = ["index", "sentence1", "sentence2", "label"]
    rte = read_glue_tsv(NLP / "rte" / "train.tsv", columns=columns) + read_glue_tsv(NLP / "rte" / "val.tsv", columns=columns)
    assert len(rte) == 2127 + 363 and {e.label for e in rte} == {"entailment", "not_entailment"}
    assert rte[-1].source.endswith("val.tsv:363")
    mrpc = read_mrpc(NLP / "mrpc" / "msr_paraphrase_train.txt")
    assert len(mrpc) == 4076 and mrpc[0].label == "1" and mrpc[0].text.startswith("Amrozi")
    sts = read_sts(NLP / "stsb" / "sts-dev.tsv")
    assert len(sts) == 1500 and sts[0].label == 5.0 and sts[0].domain == "main-captions"
    assert {e.domain for e in sts} == {"main-captions", "main-forums", "main-news"}
    assert {e.domain for e in read_sts(NLP / "stsb" / "sts-train.tsv")} == {e.domain for e in sts}  # train's "main-forum" aliased
    kept = read_sts(NLP / "stsb" / "sts-dev.tsv", domains=["main-captions", "main-news"])  # an unseen-genre split
    assert len(kept) == 1125 and {e.domain for e in kept} == {"main-captions", "main-news"}
    with pytest.raises(DataError, match="no rows of genre 'main-forum' .*main-forums"):
        read_sts(NLP / "stsb" / "sts-dev.tsv", domains=["main-forum"])
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(DataError, match=r"bad\.tsv:3: 1 tab-separated fields, expected 2"):
        read_glue_tsv(bad)
    bad.write_text("g\tf\ty\t1\tnot-a-score\ta\tb\n")
    with pytest.raises(DataError, match=r"bad\.tsv:1: score 'f'|bad\.tsv:1: score"):
        read_sts(bad)
    ranking = tmp_path / "rank.tsv"
    ranking.write_text("qid\tquery\tcandidate\tlabel\nq\tx\ta\t0\nq\tx\tb\t0\n")
    with pytest.raises(DataError, match=r"rank\.tsv:2: query 'q' has 0 relevant"):
        read_ranking_tsv(ranking)


# -- config ------------------------------------------------------------------------------------
def _raw(**overrides):
    raw = {"encoder": {"name": "x"}, "tasks": [
        {"name": "a", "kind": "classification", "data": {"train": "a.tsv", "format": "glue_tsv"}},
        {"name": "lm", "kind": "mlm", "data": {"from_tasks": ["a"]}}]}
    raw.update(overrides)
    return raw


@pytest.mark.parametrize("change, message", [
    (lambda r: r["tasks"][0].update(kind="clasification"), r"tasks\.0\.kind': unknown NLP task kind 'clasification'"),
    (lambda r: r["tasks"][1]["data"].update(from_tasks=["zz"]), r"from_tasks names 'zz'"),
    (lambda r: r["tasks"][0]["data"].update(format="csv"), r"tasks\.0\.data': unknown format 'csv'"),
    (lambda r: r["tasks"][0]["data"].update(options={"txt": "x"}), r"unknown option 'txt' for format 'glue_tsv'"),
    (lambda r: r["tasks"][0].update(metrics=["auc"]), r"tasks\.0\.metrics': 'auc' is not a metric of kind 'classification'"),
    (lambda r: r.update(balancer={"name": "pcgrad"}, sampling={"strategy": "uniform"}), r"needs strategy `round`"),
    (lambda r: r.update(sampling={"strategy": "uniform", "main": ["a"]}), r"`main` is only used by strategy auxiliary_first"),
    (lambda r: r.update(train={"monitor": "pearson"}), r"no task computes metric 'pearson'"),
])
def test_config_errors_are_one_line_naming_the_key(change, message):
    raw = _raw()
    change(raw)
    with pytest.raises(ConfigError, match=message) as error:
        parse_nlp_config(raw, "run.yaml")
    assert str(error.value).startswith("run.yaml: ") and "\n" not in str(error.value)


@pytest.mark.parametrize("sampling", [{}, {"strategy": "proportional"}, {"strategy": "temperature", "temperature": 3.0, "cap": 0.5},
                                      {"strategy": "auxiliary_first", "main": ["a"]}])
def test_saved_config_reads_back_to_the_same_config(sampling):
    import yaml

    from mtlkit.nlp.config import dump_nlp_config

    config = parse_nlp_config(_raw(sampling=sampling, init_from="/runs/mtl"))
    again = parse_nlp_config(yaml.safe_load(dump_nlp_config(config)), "config.yaml")
    assert again == config


def test_gradient_balancer_defaults_to_round_sampling():
    assert parse_nlp_config(_raw(balancer={"name": "pcgrad"})).strategy == "round"
    assert parse_nlp_config(_raw()).strategy == "proportional"


# -- a whole run through the CLI -----------------------------------------------------------------
def test_tiny_multitask_run_through_mtlkit_train(tiny, tmp_path):
    root, _, _ = tiny
    rows = {"train": 24, "validation": 12, "test": 12}
    config = {
        "seed": 0,
        "encoder": {"name": str(root)},
        "sampling": {"strategy": "temperature", "temperature": 2.0},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "patience": None, "monitor": "loss"},
        "tasks": [
            {"name": "sst2", "kind": "classification", "max_length": 32,
             "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                      "test": str(NLP / "sst2" / "test.tsv"), "format": "glue_tsv", "max_rows": rows}},
            {"name": "rte", "kind": "classification", "max_length": 48,
             "data": {"train": [str(NLP / "rte" / "train.tsv"), str(NLP / "rte" / "val.tsv")], "validation": str(NLP / "rte" / "dev.tsv"),
                      "format": "glue_tsv", "options": {"columns": ["index", "sentence1", "sentence2", "label"]},
                      "max_rows": rows}},
            {"name": "stsb", "kind": "regression", "max_length": 32, "prediction_inputs": ["rte"],  # P(entailment) as a feature
             "data": {"train": str(NLP / "stsb" / "sts-train.tsv"), "format": "sts", "split": {"validation": 0.2},
                      "max_rows": rows}},
            {"name": "genre", "kind": "domain", "grl_lambda": 0.1, "max_length": 32,
             "data": {"train": str(NLP / "stsb" / "sts-train.tsv"), "format": "sts", "split": {"validation": 0.2}, "max_rows": rows}},
            {"name": "lm", "kind": "mlm", "max_length": 32, "data": {"from_tasks": ["sst2", "rte"]}},
        ],
    }
    import yaml

    path = tmp_path / "glue.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tasks"] == ["sst2", "rte", "stsb", "genre", "lm"] and summary["epochs_run"] == 2
    assert summary["rows"]["rte"] == {"train": 24, "validation": 12} and summary["rows"]["lm"]["train"] == 48
    assert set(summary["validation"]["stsb"]) >= {"loss", "rows", "pearson", "spearman"}
    assert set(summary["validation"]["lm"]) >= {"perplexity"} and set(summary["test"]) == {"sst2", "lm"}  # lm: sst2 test texts
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.jsonl", "test_metrics.json"):
        assert (run_dir / name).exists(), name
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["tasks"][1]["labels"] == ["entailment", "not_entailment"]
    assert sorted(saved["tasks"][3]["labels"]) == saved["tasks"][3]["labels"]
    evaluated = CliRunner().invoke(app, ["evaluate", str(run_dir), "--json", str(tmp_path / "eval.json")])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["validation"]["stsb"]["pearson"] == pytest.approx(summary["validation"]["stsb"]["pearson"], abs=1e-6)


def test_tiny_run_on_the_other_shared_datasets_through_mtlkit_train(tiny, tmp_path):
    """MRPC, WNUT-17, SciERC (entities + relations, separate encoders) and XQuAD (with the answer auxiliary)."""
    import yaml

    root, _, _ = tiny
    rows = {"train": 12, "validation": 6, "test": 6}
    scierc = {"train": str(NLP / "scierc" / "train.json"), "validation": str(NLP / "scierc" / "dev.json"),
              "test": str(NLP / "scierc" / "test.json"), "format": "scierc", "max_rows": rows}
    config = {
        "seed": 0, "encoder": {"name": str(root)}, "sampling": {"strategy": "proportional"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "patience": None, "monitor": "loss"},
        "tasks": [
            {"name": "mrpc", "kind": "classification", "max_length": 48, "metrics": ["accuracy", "f1"],
             "data": {"train": str(NLP / "mrpc" / "msr_paraphrase_train.txt"), "test": str(NLP / "mrpc" / "msr_paraphrase_test.txt"),
                      "format": "mrpc", "split": {"validation": 0.1}, "max_rows": rows}},
            {"name": "wnut", "kind": "tagging", "max_length": 48,
             "labels": ["O"] + [f"{p}-{t}" for t in ("corporation", "creative-work", "group", "location", "person", "product") for p in "BI"],
             "data": {"train": str(NLP / "wnut17" / "wnut17train.conll"), "validation": str(NLP / "wnut17" / "emerging.dev.conll"),
                      "format": "conll", "max_rows": rows}},
            {"name": "ner", "kind": "span_ner", "max_length": 64, "encoder": "own", "width_dim": 8,
             "labels": ["Generic", "Material", "Method", "Metric", "OtherScientificTerm", "Task"], "data": scierc},
            {"name": "rel", "kind": "relation", "max_length": 64,
             "labels": ["COMPARE", "CONJUNCTION", "EVALUATE-FOR", "FEATURE-OF", "HYPONYM-OF", "PART-OF", "USED-FOR"], "data": scierc},
            {"name": "qa", "kind": "span_qa", "max_length": 96, "doc_stride": 16, "max_question_length": 32, "answer_classifier": True,
             "metrics": ["squad_em", "squad_f1", "answer_window_accuracy"],
             "data": {"train": str(NLP / "xquad_en" / "xquad.en.json"), "format": "squad",
                      "split": {"validation": 0.1, "test": 0.1, "group": "paragraph"}, "max_rows": rows}},
        ],
    }
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["validation"]) == {"mrpc", "wnut", "ner", "rel", "qa"}
    assert {"f1", "accuracy"} <= set(summary["test"]["mrpc"]) and {"entity_f1"} <= set(summary["validation"]["wnut"])
    assert {"entity_f1"} <= set(summary["test"]["ner"]) and {"relation_f1", "relation_strict_f1"} <= set(summary["test"]["rel"])
    assert {"squad_em", "squad_f1", "answer_window_accuracy"} <= set(summary["test"]["qa"])
    assert summary["rows"]["qa"]["train"] == 12 and summary["rows"]["rel"]["test"] == 6
    assert all(0.0 <= summary["test"][t][m] <= 1.0 for t, m in (("qa", "squad_f1"), ("rel", "relation_f1"), ("mrpc", "f1")))


def test_second_stage_starts_from_the_multitask_weights(tiny, tmp_path):
    """MT-DNN's fine-tuning stage: ``init_from`` loads the shared encoder and the task's own head."""
    from mtlkit.nlp.run import train_nlp_run

    root, _, _ = tiny
    sst2 = {"name": "sst2", "kind": "classification", "max_length": 24,
            "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                     "format": "glue_tsv", "max_rows": {"train": 32, "validation": 16}}}
    stsb = {"name": "stsb", "kind": "regression", "max_length": 24,
            "data": {"train": str(NLP / "stsb" / "sts-train.tsv"), "format": "sts", "max_rows": {"train": 32, "validation": 8}}}
    train = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "patience": None}
    mtl = train_nlp_run(parse_nlp_config({"encoder": {"name": str(root)}, "train": train, "tasks": [sst2, stsb]}), tmp_path / "mtl")
    frozen = {**train, "epochs": 1, "lr": 1e-12}  # effectively no update: the run scores the weights it started from
    second = train_nlp_run(parse_nlp_config({"encoder": {"name": str(root)}, "train": frozen, "tasks": [sst2],
                                             "init_from": str(tmp_path / "mtl")}), tmp_path / "ft")
    fresh = train_nlp_run(parse_nlp_config({"encoder": {"name": str(root)}, "train": frozen, "tasks": [sst2]}), tmp_path / "fresh")
    # the same 16 validation rows in both configs (subsamples are keyed by task name, not position)
    assert second["validation"]["sst2"]["loss"] == pytest.approx(mtl["validation"]["sst2"]["loss"], abs=1e-5)
    assert abs(fresh["validation"]["sst2"]["loss"] - mtl["validation"]["sst2"]["loss"]) > 1e-3
    assert second["init_from"]["loaded"] > 0 and second["init_from"]["fresh"] == []


def test_interrupted_run_resumes_exactly(tiny, tmp_path, monkeypatch):
    """Sampler order and masked-LM masks are functions of (seed, epoch, step): a resumed run matches."""
    root, _, _ = tiny
    rows = {"train": 24, "validation": 8}
    config = parse_nlp_config({
        "encoder": {"name": str(root)}, "sampling": {"strategy": "annealed"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "patience": None, "checkpoint_every": 2},
        "tasks": [{"name": "sst2", "kind": "classification", "max_length": 24,
                   "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                            "format": "glue_tsv", "max_rows": rows}},
                  {"name": "lm", "kind": "mlm", "max_length": 24, "data": {"from_tasks": ["sst2"]}}]})
    whole, resumed = train_whole_and_resumed(config, tmp_path, monkeypatch, interrupt_at=9)  # mid-epoch 2, one step after a checkpoint
    assert resumed["validation"] == whole["validation"]
    assert (tmp_path / "whole" / "metrics.jsonl").read_text().count("perplexity") == 2
    assert validation_log(tmp_path / "resumed") == validation_log(tmp_path / "whole")


def test_example_glue_config_is_valid():
    from mtlkit.config import load_any_config

    from conftest import REPO

    config = load_any_config(REPO / "examples" / "glue_mtdnn.yaml")
    assert [e.task.name for e in config.tasks] == ["sst2", "rte", "mrpc", "stsb"]
    assert all(p.exists() for e in config.tasks for s in ("train", "validation", "test") for p in getattr(e.data, s) or [])


def test_holdout_keeps_groups_in_one_split():
    from mtlkit.nlp.records import QAExample
    from mtlkit.nlp.run import _holdout

    rows = [QAExample(f"{p}-{q}", "q?", "c", (), paragraph=f"p{p}") for p in range(20) for q in range(3)]
    parts = _holdout(rows, {"validation": 0.2}, seed=0, task="qa", group="paragraph")
    assert len(parts["validation"]) == 12 and len(parts["train"]) == 48
    assert not {r.paragraph for r in parts["train"]} & {r.paragraph for r in parts["validation"]}
    with pytest.raises(ConfigError, match="no attribute 'genre'"):
        _holdout(rows, {"validation": 0.2}, seed=0, task="qa", group="genre")


# -- one task's prediction as another's input (stop-gradient) ------------------------------------
def test_prediction_input_feeds_probabilities_without_training_the_source(tiny):
    _, tokenizer, bert = tiny
    import copy

    source = ClassificationTask(name="sent", labels=["0", "1"], max_length=24, head={"dropout": 0.0})
    consumer = RegressionTask(name="score", max_length=24, prediction_inputs=["sent"], head={"dropout": 0.0})
    model = NLPMultiTaskModel({"shared": copy.deepcopy(bert)}, [source, consumer]).eval()
    assert model.heads["score"].output.in_features == model.hidden_size + 2  # pooled ⊕ P(sent)
    table = consumer.featurize(PAIRS, tokenizer)
    batch = table.take(slice(0, 3))
    out = model(batch.inputs, ("score",))["score"]
    # by hand: the source's softmax on the same texts, appended to the pooled vector
    inputs = trim_padding(batch.inputs)
    sequence, pooled = model.encode("shared", inputs)
    probabilities = torch.softmax(model.heads["sent"](sequence, pooled, inputs), -1)
    assert torch.allclose(out, model.heads["score"](sequence, torch.cat([pooled, probabilities], -1), inputs), atol=1e-6)
    model.zero_grad()
    consumer.compute_loss(out, batch.targets["score"]).backward()
    assert all(p.grad is None for p in model.heads["sent"].parameters())  # stop-gradient: the source is not trained
    assert model.heads["score"].output.weight.grad is not None
    assert any(p.grad is not None for p in model.encoders["shared"].parameters())  # the consumer still trains the encoder


def test_prediction_inputs_chain_through_mixing_and_own_encoders(tiny):
    """A → B → C with MMoE mixing on the shared encoder and C on its own encoder: shapes, and no gradient to A or B."""
    _, tokenizer, bert = tiny
    import copy

    a = ClassificationTask(name="a", labels=["0", "1"], max_length=24)
    b = RegressionTask(name="b", max_length=24, prediction_inputs=["a"])
    c = ClassificationTask(name="c", labels=["x", "y", "z"], max_length=24, prediction_inputs=["b", "a"], encoder="own")
    model = _model(copy.deepcopy(bert), [a, b, c], mixing=MixingSpec(backbone="mmoe", options={"experts": 2, "expert_hidden": [16]}), own=["c"])
    assert model.heads["c"].output.in_features == model.hidden_size + 1 + 2
    batch = b.featurize(PAIRS, tokenizer).take(slice(0, 3))
    out = model(batch.inputs, ("c",))["c"]
    assert out.shape == (3, 3)
    model.zero_grad()
    out.sum().backward()
    assert all(p.grad is None for name in ("a", "b") for p in model.heads[name].parameters())
    assert all(p.grad is None for p in model.encoders["shared"].parameters())  # c's loss reaches only its own encoder
    assert model.heads["c"].output.weight.grad is not None


@pytest.mark.parametrize("tasks, message", [
    ([{"name": "a", "kind": "classification", "prediction_inputs": ["a"]}], "names the task itself"),
    ([{"name": "a", "kind": "classification", "prediction_inputs": ["zz"]}], "'zz', which is not a task"),
    ([{"name": "a", "kind": "classification", "prediction_inputs": ["b"]},
      {"name": "b", "kind": "classification", "prediction_inputs": ["a"]}], r"cycle: a → b → a"),
    ([{"name": "a", "kind": "classification"}, {"name": "m", "kind": "mlm", "prediction_inputs": ["a"]}], "reads the pooled vector"),
    ([{"name": "m", "kind": "mlm"}, {"name": "a", "kind": "classification", "prediction_inputs": ["m"]}], "no per-text prediction"),
])
def test_prediction_input_errors_name_the_task(tasks, message):
    for t in tasks:
        t["data"] = {"train": "a.tsv", "format": "glue_tsv"}
    with pytest.raises(ConfigError, match=message):
        parse_nlp_config({"encoder": {"name": "x"}, "tasks": tasks}, "run.yaml")


def test_head_lr_puts_the_heads_in_their_own_groups(tiny):
    """train.head_lr: heads at their rate (PURE's 5e-4), the encoder at train.lr; the tied MLM decoder stays the encoder's."""
    import copy

    from mtlkit.balancing import BalancerSpec, build_balancer
    from mtlkit.train import Trainer, TrainSpec

    _, _, bert = tiny
    tasks = [ClassificationTask(name="a", labels=["0", "1"]), MaskedLMTask(name="lm")]
    model = NLPMultiTaskModel({"shared": copy.deepcopy(bert)}, tasks)
    trainer = Trainer(model, tasks, build_balancer(BalancerSpec(), tasks),
                      TrainSpec(lr=5e-5, head_lr=5e-4, weight_decay=0.01, progress=False))
    lr_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(lr_of[id(p)] == 5e-4 for p in model.heads["a"].parameters())
    assert all(lr_of[id(p)] == 5e-5 for p in model.encoders["shared"].parameters())
    assert len(lr_of) == len(list(model.parameters()))  # every parameter once


def test_replaced_token_detection_corrupts_real_tokens_and_its_discriminator_learns(tiny):
    from mtlkit.nlp.kinds.replaced_token import ReplacedTokenTask

    _, tokenizer, bert = tiny
    task = ReplacedTokenTask(name="rtd", probability=0.3, max_length=16)
    texts = [TextExample("it 's a charming journey", label="1"), TextExample("bleak and desperate", label="0"),
             TextExample("kids , spirit", label="1"), TextExample("a man is playing a flute .", label="1")] * 8
    table = task.featurize(texts, tokenizer)
    a = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(3))
    b = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(3))
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])  # a function of the step generator
    labels, original = a.targets["rtd"], table.inputs["input_ids"]
    special = table.targets["rtd"] == -100
    assert (labels[special] == -100).all() and torch.equal(a.inputs["input_ids"][special], original[special])
    assert torch.equal(labels[~special] == 1, (a.inputs["input_ids"] != original)[~special])
    model = _model(bert, [task])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(60):
        batch = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(step))
        loss = task.compute_loss(model(batch.inputs, ("rtd",))["rtd"], batch.targets["rtd"], None, batch.masks["rtd"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    batch = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(999))
    sums = task.eval_outputs(model(batch.inputs, ("rtd",))["rtd"].detach(), batch)
    accuracy = task.evaluate(sums, table, texts)["replaced_token_accuracy"]
    replaced = float((batch.targets["rtd"] == 1).sum() / (batch.targets["rtd"] != -100).sum())
    assert accuracy > 1 - replaced + 0.05, (accuracy, replaced)  # beats "nothing was replaced"
    config = parse_nlp_config({"encoder": {"name": "x"}, "tasks": [
        {"name": "a", "kind": "classification", "data": {"train": "a.tsv", "format": "glue_tsv"}},
        {"name": "rtd", "kind": "replaced_token", "data": {"from_tasks": ["a"]}}]}, "c.yaml")
    assert config.tasks[1].task.metrics == ["replaced_token_accuracy"]


def test_a_run_trains_replaced_token_detection_as_an_auxiliary_task(tiny, tmp_path):
    from mtlkit.nlp.run import train_nlp_run

    root, _, _ = tiny
    config = parse_nlp_config({
        "encoder": {"name": str(root)},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "monitor": "sst2/accuracy"},
        "tasks": [{"name": "sst2", "kind": "classification", "max_length": 24,
                   "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                            "format": "glue_tsv", "max_rows": {"train": 24, "validation": 8}}},
                  {"name": "rtd", "kind": "replaced_token", "max_length": 24, "data": {"from_tasks": ["sst2"]}}]})
    summary = train_nlp_run(config, tmp_path / "run")
    assert 0.0 <= summary["validation"]["rtd"]["replaced_token_accuracy"] <= 1.0


def test_stages_introduce_tasks_while_earlier_ones_keep_their_replay_share():
    from mtlkit.nlp.sampling import StageSpec

    def table(n, task):
        return EncodedTable({"input_ids": torch.arange(n)[:, None]}, {task: torch.zeros(n)}, {task: torch.ones(n, dtype=torch.bool)})

    tables = {"a": table(400, "a"), "b": table(400, "b"), "c": table(200, "c")}
    spec = SamplingSpec(strategy="stages", steps=4000, stages=[StageSpec(tasks=["a"], epochs=1),
                                                               StageSpec(tasks=["b", "c"], epochs=1, replay=0.25)])
    sampler = TaskSampler(tables, batch_size=10, spec=spec, epochs=3)
    first = torch.tensor([t for step in sampler.plan(0) for t in step])
    assert (first == 0).all()  # stage 1: only a; b and c are not introduced yet
    for epoch in (1, 2):  # the last stage runs on
        second = torch.tensor([t for step in sampler.plan(epoch) for t in step])
        share = torch.bincount(second, minlength=3).double() / len(second)
        assert abs(share[0] - 0.25) < 0.03 and abs(share[1] - 0.5) < 0.03 and abs(share[2] - 0.25) < 0.03, share
    sequential = TaskSampler(tables, 10, spec.model_copy(update={"stages": [StageSpec(tasks=["a"]), StageSpec(tasks=["b", "c"], replay=0.0)]}), epochs=2)
    assert 0 not in {t for step in sequential.plan(1) for t in step}  # replay 0: sequential fine-tuning


def test_stage_config_errors_name_the_key():
    base = {"encoder": {"name": "x"}, "train": {"epochs": 2},
            "tasks": [{"name": "a", "kind": "classification", "data": {"train": "a.tsv", "format": "glue_tsv"}},
                      {"name": "b", "kind": "classification", "data": {"train": "b.tsv", "format": "glue_tsv"}}]}
    cases = {
        r"sampling\.stages\[1\]\.tasks: unknown task 'c'": [{"tasks": ["a"]}, {"tasks": ["b", "c"]}],
        r"sampling\.stages: task 'b' is in no stage": [{"tasks": ["a"]}],
        r"sampling\.stages: 3 epochs of stages, but train\.epochs is 2": [{"tasks": ["a"], "epochs": 2}, {"tasks": ["b"]}],
        r"stages: task 'a' is introduced twice": [{"tasks": ["a"]}, {"tasks": ["a", "b"]}],
    }
    for message, stages in cases.items():
        with pytest.raises(ConfigError, match=message):
            parse_nlp_config({**base, "sampling": {"strategy": "stages", "stages": stages}}, "c.yaml")
    with pytest.raises(ConfigError, match="strategy stages needs `stages`"):
        parse_nlp_config({**base, "sampling": {"strategy": "stages"}}, "c.yaml")


def test_a_staged_run_trains_and_its_config_reads_back(tiny, tmp_path):
    import yaml

    from mtlkit.nlp.run import train_nlp_run

    root, _, _ = tiny
    data = {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"), "format": "glue_tsv",
            "max_rows": {"train": 16, "validation": 8}}
    config = parse_nlp_config({
        "encoder": {"name": str(root)}, "sampling": {"strategy": "stages", "steps": 4,
                                                      "stages": [{"tasks": ["lm"]}, {"tasks": ["sst2"], "replay": 0.5}]},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "monitor": "sst2/accuracy"},
        "tasks": [{"name": "sst2", "kind": "classification", "max_length": 24, "data": data},
                  {"name": "lm", "kind": "mlm", "max_length": 24, "data": {"from_tasks": ["sst2"]}}]})
    summary = train_nlp_run(config, tmp_path / "run")
    assert summary["epochs_run"] == 2 and summary["sampling"] == "stages"
    saved = parse_nlp_config(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()), "config.yaml")
    assert saved.sampling == config.sampling
