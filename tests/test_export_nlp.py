"""`mtlkit export` of NLP runs: one ONNX graph (encoder + every head), verified, served by `mtlkit serve`.

Two tiny runs: the four-kind run of tests/nlp_serving_runs.py (classification, regression on
pairs, tagging, span QA) and an information-extraction run (span NER + relation on SciERC). The
export is verified against PyTorch on real inputs per kind before it is written; served through
onnxruntime it answers the records the PyTorch run answers, for batch sizes and text lengths the
tracing example never had.
"""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from mtlkit.cli import app as cli
from mtlkit.errors import ConfigError
from mtlkit.export import ExportError, export_run
from mtlkit.serve import create_app

from nlp_serving_runs import NLP, train_tiny_nlp_run
from tiny_bert import save_tiny_bert


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = train_tiny_nlp_run(tmp_path_factory.mktemp("nlp_export"))
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    return run, run / "export" / "onnx", result.output


@pytest.fixture(scope="module")
def ie_run(tmp_path_factory):
    from mtlkit.nlp.config import parse_nlp_config
    from mtlkit.nlp.run import train_nlp_run

    directory = tmp_path_factory.mktemp("nlp_export_ie")
    save_tiny_bert(directory / "bert", [(NLP / "scierc" / "dev.json", 20)], max_positions=256)
    data = {"train": str(NLP / "scierc" / "dev.json"), "validation": str(NLP / "scierc" / "test.json"), "format": "scierc",
            "max_rows": {"train": 16, "validation": 6}}
    config = parse_nlp_config({
        "encoder": {"name": str(directory / "bert")},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "patience": None},
        "tasks": [{"name": "ent", "kind": "span_ner", "max_length": 96, "max_span_width": 4, "width_dim": 8, "data": data},
                  {"name": "rel", "kind": "relation", "max_length": 96, "data": data}]})
    train_nlp_run(config, directory / "run")
    return directory / "run"


def _close(got, want, tolerance=1e-4):
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _close(got[key], want[key], tolerance)
    elif isinstance(want, list):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            _close(a, b, tolerance)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=tolerance)
    else:
        assert got == want


def test_export_writes_graph_tokenizer_and_verified_manifest(exported):
    run, directory, output = exported
    assert (directory / "model.onnx").is_file() and (directory / "tokenizer" / "tokenizer.json").is_file()
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["run_kind"] == "nlp" and manifest["format"] == "onnx"
    assert [o["name"] for o in manifest["outputs"]] == ["sst2", "stsb", "ner", "qa"]  # the masked-LM auxiliary has nothing to serve
    inputs = {s["name"]: s["axes"] for s in manifest["inputs"]}
    assert inputs["input_ids"] == ["batch", "sequence"] and inputs["tok_answer_mask"] == ["batch", "sequence"]
    check = manifest["verification"]
    assert check["checked"] and set(check["max_abs_diff_by_kind"]) == {"classification", "regression", "tagging", "span_qa"}
    assert all(0 <= v <= 1e-4 for v in check["max_abs_diff_by_kind"].values())
    assert check["rows"]["qa"] > 8  # QA contexts are several windows each: real inputs, not a toy
    assert "max |diff| by kind" in output and "span_qa" in output


@pytest.mark.parametrize("body", [
    {"task": "sst2", "inputs": ["a fine film", "bad", "one more film that I did not like at all"]},
    {"inputs": ["Paris is nice in June"]},
    {"task": "stsb", "inputs": [["A man plays.", "A man is playing a flute."]]},
    {"task": "ner", "inputs": [{"tokens": ["Bob", "Dylan", "sang", "in", "New", "York"]}] * 5},
    {"task": "qa", "inputs": [{"id": "a", "question": "Where?", "context": " ".join(["Denver is a city in Colorado."] * 20)},
                              {"id": "b", "question": "Who won?", "context": "The Panthers won the game."}]},
], ids=["classification", "all", "regression", "tagging", "span_qa"])
def test_onnx_serves_the_records_of_pytorch(exported, body):
    run, directory, _ = exported
    onnx, torch_client = TestClient(create_app(directory)), TestClient(create_app(run))
    assert onnx.get("/health").json()["backend"] == "onnx"
    got, want = onnx.post("/predict", json=body), torch_client.post("/predict", json=body)
    assert got.status_code == want.status_code == 200, got.text
    _close(got.json(), want.json())


def test_span_ner_and_relation_export(ie_run, tmp_path):
    result = export_run(ie_run, "onnx", tmp_path / "ie")
    check = result.manifest["verification"]
    assert set(check["max_abs_diff_by_kind"]) == {"span_ner", "relation"} and check["max_abs_diff"] <= 1e-4
    onnx, torch_client = TestClient(create_app(tmp_path / "ie")), TestClient(create_app(ie_run))
    sentence = "We apply the parser to machine translation and to question answering".split()
    for body in ({"task": "ent", "inputs": [" ".join(sentence), {"tokens": sentence[:4]}]},
                 {"task": "rel", "inputs": [{"tokens": sentence, "entities": [{"start": 3, "end": 3, "type": "Method"},
                                                                              {"start": 5, "end": 6, "type": "Task"}]}]}):
        got, want = onnx.post("/predict", json=body), torch_client.post("/predict", json=body)
        assert got.status_code == want.status_code == 200, got.text
        _close(got.json(), want.json())


def test_export_refusals_and_damaged_manifest(exported, tmp_path):
    run, directory, _ = exported
    with pytest.raises(ExportError, match="onnx only"):
        export_run(run, "torchscript", tmp_path / "ts")
    manifest = json.loads((directory / "manifest.json").read_text())
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.onnx").write_bytes((directory / "model.onnx").read_bytes())
    (damaged / "manifest.json").write_text(json.dumps({**manifest, "tokenizer": "../tokenizer"}))
    with pytest.raises(ConfigError, match="'tokenizer' must name a folder inside the export directory"):
        create_app(damaged)
