"""Per-task LoRA adapters (``encoder: {adapters: lora, r, alpha}``) on a frozen shared encoder.

A tiny two-task run (classification + tagging) trains one adapter per task: the base encoder's
weights do not move, each task's adapter does, the checkpoint holds only adapters and heads, the
run loads back to the same predictions, serving switches adapters per task (PyTorch and the ONNX
export), and configs adapters cannot serve are one-line errors before any run directory exists.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from starlette.testclient import TestClient

from mtlkit.errors import ConfigError
from mtlkit.export import export_run
from mtlkit.nlp.config import parse_nlp_config
from mtlkit.serve import create_app
from nlp_resume import train_whole_and_resumed, validation_log

from nlp_serving_runs import NLP, WNUT
from tiny_bert import save_tiny_bert

ROWS = {"train": 16, "validation": 6}


def _raw(bert, **encoder):
    return {"encoder": {"name": str(bert), "adapters": "lora", "r": 4, "alpha": 8, **encoder},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "patience": None},
            "tasks": [{"name": "sst2", "kind": "classification", "max_length": 64,
                       "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                                "format": "glue_tsv", "max_rows": ROWS}},
                      {"name": "ner", "kind": "tagging", "max_length": 48, "labels": WNUT,
                       "data": {"train": str(NLP / "wnut17" / "wnut17train.conll"), "validation": str(NLP / "wnut17" / "emerging.dev.conll"),
                                "format": "conll", "max_rows": ROWS}}]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mtlkit.nlp.run import train_nlp_run

    directory = tmp_path_factory.mktemp("lora")
    save_tiny_bert(directory / "bert", [(NLP / "sst2" / "train.tsv", 60), (NLP / "wnut17" / "wnut17train.conll", 200)])
    summary = train_nlp_run(parse_nlp_config(_raw(directory / "bert")), directory / "run")
    return directory, summary


def test_only_adapters_and_heads_train_and_are_saved(trained):
    directory, summary = trained
    state = torch.load(directory / "run" / "best.pt", weights_only=True)["model"]
    encoder_keys = [k for k in state if k.startswith("encoders.")]
    assert encoder_keys and all("lora_" in k for k in encoder_keys)
    assert {k.split(".")[0] for k in state} == {"encoders", "heads"}
    assert any(".sst2." in k for k in encoder_keys) and any(".ner." in k for k in encoder_keys)  # one adapter per task
    assert 0 < summary["trained_parameters"] < summary["parameters"] / 5
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every adapter learned


def test_the_base_encoder_stays_frozen_and_adapters_switch_per_task(trained):
    from mtlkit.nlp.run import load_nlp_config, load_nlp_model

    directory, _ = trained
    model = load_nlp_model(directory / "run", load_nlp_config(directory / "run"))
    base = load_file(str(directory / "bert" / "model.safetensors"))
    loaded = {k.split("base_model.model.", 1)[1].replace(".base_layer", ""): v
              for k, v in model.encoders["shared"].state_dict().items() if "lora_" not in k and "base_model.model." in k}
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(loaded[key], base[key])  # the frozen base came back from encoder.name, unchanged
    ids = torch.tensor([[2, 10, 11, 3]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        sst2, _ = model.encode("adapter:sst2", inputs)
        ner, _ = model.encode("adapter:ner", inputs)
    assert not torch.allclose(sst2, ner)


def test_serving_and_onnx_switch_adapters(trained):
    directory, _ = trained
    body = {"inputs": ["Paris is nice", "a fine film"]}
    served = TestClient(create_app(directory / "run")).post("/predict", json=body)
    assert served.status_code == 200, served.text
    result = export_run(directory / "run", "onnx", directory / "onnx")
    assert result.manifest["verification"]["max_abs_diff"] <= 1e-4
    onnx = TestClient(create_app(directory / "onnx")).post("/predict", json=body)
    assert onnx.status_code == 200
    for got, want in zip(onnx.json()["predictions"], served.json()["predictions"]):
        assert got["ner"]["tags"] == want["ner"]["tags"]
        assert list(got["sst2"]["probabilities"].values()) == pytest.approx(list(want["sst2"]["probabilities"].values()), abs=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"encoder": {"r": 4}}, "r configures adapters: set adapters: lora"),
    ({"mixing": {"backbone": "mmoe"}}, "encoder.adapters: mixing"),
    ({"balancer": {"name": "pcgrad"}}, "encoder.adapters: balancer 'pcgrad'"),
    ({"own": True}, "encoder.adapters: task 'sst2' has `encoder: own`"),
])
def test_configs_adapters_cannot_serve_are_one_line_errors(tmp_path, change, message):
    raw = _raw(tmp_path / "bert")
    if "encoder" in change:
        raw["encoder"] = {"name": "x", **change["encoder"]}
    elif "own" in change:
        raw["tasks"][0]["encoder"] = "own"
    else:
        raw.update(change)
    with pytest.raises(ConfigError) as error:
        parse_nlp_config(raw)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_encoder_peft_cannot_wrap_is_a_config_error(trained, tmp_path):
    from mtlkit.nlp.run import train_nlp_run

    directory, _ = trained
    config = parse_nlp_config(_raw(directory / "bert", target_modules=["no_such_projection"]))
    with pytest.raises(ConfigError, match="encoder.adapters: PEFT cannot wrap encoder BertModel"):
        train_nlp_run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_interrupted_adapter_run_resumes_exactly(trained, tmp_path, monkeypatch):
    """last.pt holds adapters, heads and optimizer state; the frozen base is reloaded: the resumed run matches."""


    directory, _ = trained
    raw = _raw(directory / "bert")
    raw["train"].update(checkpoint_every=2)
    config = parse_nlp_config(raw)
    whole, resumed = train_whole_and_resumed(config, tmp_path, monkeypatch, interrupt_at=7)  # mid-epoch 2, one step after a checkpoint
    assert resumed["validation"] == whole["validation"]
    assert validation_log(tmp_path / "resumed") == validation_log(tmp_path / "whole")
