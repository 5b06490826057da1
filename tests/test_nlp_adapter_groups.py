"""LoRA adapters per task group (``encoder: {adapters: lora, groups: {text: [sst2, ner]}}``).

A tiny three-task run: sst2 (classification) and ner (tagging) share the adapter of group
``text``, stsb (regression on pairs) is in no group and keeps its own. Both grouped tasks' losses
reach the same adapter tensors (and no other adapter), a batch of both runs the encoder once, the
checkpoint holds one adapter per group (``text``, ``stsb``), an interrupted run resumes to the same
metrics, serving (PyTorch and the ONNX export) answers every task, and bad groups are one-line
config errors before any run directory exists.
"""

from __future__ import annotations

import pytest
import torch
from starlette.testclient import TestClient

from mtlkit.errors import ConfigError
from mtlkit.export import export_run
from mtlkit.nlp.config import parse_nlp_config
from mtlkit.serve import create_app
from nlp_resume import train_whole_and_resumed

from nlp_serving_runs import NLP, WNUT
from tiny_bert import save_tiny_bert

ROWS = {"train": 16, "validation": 6}
GROUPS = {"text": ["sst2", "ner"]}


def _raw(bert, groups=GROUPS, epochs=2):
    return {"encoder": {"name": str(bert), "adapters": "lora", "r": 4, "alpha": 8, "groups": groups},
            "train": {"epochs": epochs, "batch_size": 8, "lr": 1e-2, "progress": False, "patience": None},
            "tasks": [{"name": "sst2", "kind": "classification", "max_length": 64,
                       "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                                "format": "glue_tsv", "max_rows": ROWS}},
                      {"name": "ner", "kind": "tagging", "max_length": 48, "labels": WNUT,
                       "data": {"train": str(NLP / "wnut17" / "wnut17train.conll"), "validation": str(NLP / "wnut17" / "emerging.dev.conll"),
                                "format": "conll", "max_rows": ROWS}},
                      {"name": "stsb", "kind": "regression", "max_length": 48,
                       "data": {"train": str(NLP / "stsb" / "sts-train.tsv"), "validation": str(NLP / "stsb" / "sts-dev.tsv"),
                                "format": "sts", "max_rows": ROWS}}]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mtlkit.nlp.run import train_nlp_run

    directory = tmp_path_factory.mktemp("lora_groups")
    save_tiny_bert(directory / "bert", [(NLP / "sst2" / "train.tsv", 60), (NLP / "wnut17" / "wnut17train.conll", 200),
                                        (NLP / "stsb" / "sts-train.tsv", 40)])
    summary = train_nlp_run(parse_nlp_config(_raw(directory / "bert")), directory / "run")
    return directory, summary


def _adapters(keys):
    """The adapter names in LoRA parameter names (``…lora_A.<adapter>.weight``)."""
    return {k.split("lora_", 1)[1].split(".")[1] for k in keys if "lora_" in k}


def _model(directory):
    from mtlkit.nlp.run import load_nlp_config, load_nlp_model

    return load_nlp_model(directory / "run", load_nlp_config(directory / "run"))


def test_the_checkpoint_holds_one_adapter_per_group(trained):
    directory, summary = trained
    state = torch.load(directory / "run" / "best.pt", weights_only=True)["model"]
    encoder_keys = [k for k in state if k.startswith("encoders.")]
    assert encoder_keys and all("lora_" in k for k in encoder_keys)
    assert _adapters(encoder_keys) == {"text", "stsb"}  # no sst2 or ner adapter: they share text's
    per_adapter = {a: sum(state[k].numel() for k in encoder_keys if f".{a}." in k) for a in ("text", "stsb")}
    assert per_adapter["text"] == per_adapter["stsb"] > 0  # two adapters of one shape, not three
    assert all(state[k].abs().sum() > 0 for k in encoder_keys if "lora_B" in k)  # both adapters learned (B starts at zero)
    assert summary["trained_parameters"] < summary["parameters"] / 5


def test_grouped_tasks_update_the_same_adapter_tensors(trained):
    directory, _ = trained
    model = _model(directory)
    model.train()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    touched = {}
    for task in ("sst2", "ner", "stsb"):
        model.zero_grad(set_to_none=True)
        model(inputs, (task,))[task].float().pow(2).sum().backward()
        touched[task] = {n for n, p in lora.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched["sst2"] and touched["sst2"] == touched["ner"]  # one adapter's tensors, updated by both tasks
    assert _adapters(touched["sst2"]) == {"text"}
    assert _adapters(touched["stsb"]) == {"stsb"} and not touched["stsb"] & touched["sst2"]
    assert {id(p) for p in model.task_parameters("sst2") if p.ndim == 2 and p.shape[0] == 4} == \
           {id(p) for p in model.task_parameters("ner") if p.ndim == 2 and p.shape[0] == 4}  # the same lora_A tensors


def test_a_group_runs_the_encoder_once_per_batch(trained):
    directory, _ = trained
    model = _model(directory).eval()
    calls = []
    model.encoders["shared"].register_forward_hook(lambda *_: calls.append(1))
    ids = torch.tensor([[2, 10, 11, 3]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        model(inputs, ("sst2", "ner"))
        assert len(calls) == 1  # one adapter: one pass for both heads
        model(inputs, ("sst2", "ner", "stsb"))
        assert len(calls) == 3  # and one more for stsb's own adapter


def test_serving_and_onnx_answer_every_task(trained):
    directory, _ = trained
    texts = {"tasks": ["sst2", "ner"], "inputs": ["Paris is nice", "a fine film"]}  # one group: one encoder pass
    pairs = {"task": "stsb", "inputs": [["a man plays", "a person plays"]]}  # its own adapter
    client = TestClient(create_app(directory / "run"))
    served = {"texts": client.post("/predict", json=texts), "pairs": client.post("/predict", json=pairs)}
    assert all(r.status_code == 200 for r in served.values()), [r.text for r in served.values()]
    rows = served["texts"].json()["predictions"]
    assert [len(r["ner"]["tags"]) for r in rows] == [3, 3] and all(sum(r["sst2"]["probabilities"].values()) == pytest.approx(1) for r in rows)
    assert isinstance(served["pairs"].json()["predictions"][0]["value"], float)
    result = export_run(directory / "run", "onnx", directory / "onnx")
    assert result.manifest["verification"]["max_abs_diff"] <= 1e-4
    onnx = TestClient(create_app(directory / "onnx"))
    got = onnx.post("/predict", json=texts)
    assert got.status_code == 200, got.text
    for g, w in zip(got.json()["predictions"], rows):
        assert g["ner"]["tags"] == w["ner"]["tags"]
        assert list(g["sst2"]["probabilities"].values()) == pytest.approx(list(w["sst2"]["probabilities"].values()), abs=1e-5)
    got = onnx.post("/predict", json=pairs)
    assert got.status_code == 200, got.text
    assert got.json()["predictions"][0]["value"] == pytest.approx(served["pairs"].json()["predictions"][0]["value"], abs=1e-5)


@pytest.mark.parametrize("groups, message", [
    ({"a": ["sst2", "ner"], "b": ["ner"]}, "key 'encoder.groups': Value error, task 'ner' is in two groups, 'a' and 'b'"),
    ({"a": ["sst2", "mnli"]}, "encoder.groups.a: unknown task 'mnli'; tasks are: sst2, ner, stsb"),
    ({"a": []}, "group 'a' is empty"),
    ({"stsb": ["sst2", "ner"]}, "encoder.groups.stsb: the group has the name of task 'stsb', which is not in it"),
    ({"a.b": ["sst2"]}, "group name 'a.b' must be letters, digits, _ or -"),
])
def test_bad_groups_are_one_line_errors_before_any_run(tmp_path, groups, message):
    from mtlkit.nlp.run import train_nlp_run

    with pytest.raises(ConfigError) as error:
        train_nlp_run(parse_nlp_config(_raw(tmp_path / "bert", groups)), tmp_path / "run")
    text = str(error.value).replace("Value error, ", "")
    assert message.replace("Value error, ", "") in text and "\n" not in text
    assert "encoder.groups" in text
    assert not (tmp_path / "run").exists()


def test_groups_without_adapters_is_a_config_error(tmp_path):
    raw = _raw(tmp_path / "bert")
    raw["encoder"] = {"name": "x", "groups": GROUPS}
    with pytest.raises(ConfigError, match="groups configures adapters: set adapters: lora"):
        parse_nlp_config(raw)


def test_an_interrupted_grouped_run_resumes_exactly(trained, tmp_path, monkeypatch):
    """last.pt holds the group adapters, heads and optimizer state: the resumed run's metrics equal the whole run's."""
    directory, _ = trained
    raw = _raw(directory / "bert")
    raw["train"].update(checkpoint_every=2)
    config = parse_nlp_config(raw)
    whole, resumed = train_whole_and_resumed(config, tmp_path, monkeypatch, interrupt_at=9)  # in epoch 2 (6 steps an epoch), one step after a checkpoint
    assert resumed["validation"] == whole["validation"]
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical weights
