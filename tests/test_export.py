"""`mtlkit export`: TorchScript and ONNX artifacts equal PyTorch's served outputs (Task.predict, fused score).

Tolerance: |exported − pytorch| ≤ 1e-5 + 1e-5·|pytorch| on every output (1e-5 absolute on
probabilities), on raw holdout rows encoded with the exported schema.json, at batch sizes 200 and 1.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime  # noqa: F401  (the test extra installs these: a missing one fails, never skips)
import onnxscript  # noqa: F401
import pytest
import torch
from typer.testing import CliRunner

from mtlkit.cli import app
from mtlkit.export import ATOL, RTOL, ExportError, export_run, load_exported
from mtlkit.run import load_run, predict_table

from serving_runs import holdout, shared_run

runner = CliRunner()
MODELS = ["shared_bottom", "mmoe_sequence", "single_task", "counterfactual"]
# ONNX export takes seconds (torch.export): ONNX for shared-bottom and MMoE with sequence features,
# TorchScript for all three.
CASES = [("shared_bottom", "torchscript"), ("shared_bottom", "onnx"), ("mmoe_sequence", "torchscript"),
         ("mmoe_sequence", "onnx"), ("single_task", "torchscript"), ("counterfactual", "onnx"), ("counterfactual", "torchscript")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    run_dirs = {name: shared_run(tmp_path_factory, name)[1] for name in MODELS}
    return shared_run(tmp_path_factory, MODELS[0])[0], run_dirs


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """(model, format) → ExportResult, each exported once per module."""
    _, run_dirs = runs
    done: dict = {}

    def get(model: str, format: str):
        if (model, format) not in done:
            done[model, format] = export_run(run_dirs[model], format, tmp_path_factory.mktemp(f"{model}-{format}"))
        return done[model, format]

    return get


def assert_close(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("model,format", CASES)
def test_export_matches_pytorch(runs, exported, model, format):
    data, run_dirs = runs
    result = exported(model, format)
    assert {p.name for p in result.directory.iterdir()} == {result.artifact.name, "schema.json", "manifest.json"}
    manifest = json.loads((result.directory / "manifest.json").read_text())
    assert manifest["verification"]["checked"] and manifest["verification"]["max_abs_diff"] <= ATOL

    run = load_run(run_dirs[model])
    expected_outputs = [t.name for t in run.tasks] + (["fused_score"] if run.config.model.fusion else [])
    assert [o["name"] for o in manifest["outputs"]] == expected_outputs
    rows = holdout(data)
    loaded = load_exported(result.directory)
    assert_close(loaded.predict_table(rows), predict_table(run, rows))
    assert_close(loaded.predict_table(rows.slice(3, 1)), predict_table(run, rows.slice(3, 1)))  # batch of 1


def test_onnx_graph_interface(exported):
    """The ONNX graph itself: named inputs with a symbolic batch axis, sequences as int64 id matrices."""
    import onnxruntime as ort

    result = exported("mmoe_sequence", "onnx")
    session = ort.InferenceSession(str(result.artifact), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs == {"categorical": ("tensor(int64)", ["batch", 2]), "numeric": ("tensor(float)", ["batch", 2]),
                      "seq_hist": ("tensor(int64)", ["batch", 5]), "seq_tags": ("tensor(int64)", ["batch", 3])}
    assert [o.name for o in session.get_outputs()] == ["click", "buy", "topic", "watch", "fused_score"]
    outputs = {o["name"]: o for o in result.manifest["outputs"]}
    assert outputs["click"]["postprocess"] == "sigmoid(logit + logit_offset)"
    assert outputs["click"]["logit_offset"] == pytest.approx(np.log(0.5))  # negative_sampling_rate 0.5
    assert outputs["topic"]["shape"] == ["batch", 3] and outputs["watch"]["postprocess"] == "expm1(logit)"
    assert outputs["fused_score"]["weights"] == {"click": 1.0, "watch": 0.5}
    assert result.manifest["bias_features"]["features"] == ["pos"]  # not an input: missing at serving


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_loads_without_mtlkit_code(exported):
    result = exported("shared_bottom", "torchscript")
    module = torch.jit.load(str(result.artifact))
    click, topic, watch = module(torch.tensor([[1, 2], [0, 0]]), torch.zeros(2, 2))
    assert click.shape == (2,) and (click > 0).all()  # odds
    assert torch.allclose(topic.sum(1), torch.ones(2)) and watch.shape == (2,)


def test_cli_export_default_directory(runs):
    _, run_dirs = runs
    run_dir = run_dirs["single_task"]
    result = runner.invoke(app, ["export", str(run_dir), "--format", "torchscript"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "export" / "torchscript" / "model.pt").exists()
    assert "verified against PyTorch" in result.output


def test_cli_export_errors(runs, tmp_path):
    _, run_dirs = runs
    result = runner.invoke(app, ["export", str(run_dirs["single_task"]), "--format", "tflite"])
    assert result.exit_code == 2 and "unknown export format 'tflite'; choose one of: torchscript, onnx" in result.output
    result = runner.invoke(app, ["export", str(tmp_path), "--format", "onnx"])
    assert result.exit_code == 2 and "not a trained mtlkit run" in result.output
    (tmp_path / "config.yaml").write_text("encoder: {name: minilm}\n")
    result = runner.invoke(app, ["export", str(tmp_path), "--format", "onnx"])
    assert result.exit_code == 2 and "not a trained mtlkit run (no best.pt)" in result.output  # NLP runs export: tests/test_export_nlp.py


def test_unexportable_model_names_why(runs, tmp_path, monkeypatch):
    """A backbone with data-dependent Python control flow cannot become one ONNX graph: say so."""
    import mtlkit.run

    _, run_dirs = runs
    original = mtlkit.run.load_run

    def load_with_branching_backbone(run_dir):
        run = original(run_dir)
        backbone = run.model.backbone
        forward = backbone.forward
        backbone.forward = lambda x: forward(x) if bool(x.sum() > 0) else forward(-x)
        return run

    monkeypatch.setattr(mtlkit.run, "load_run", load_with_branching_backbone)
    with pytest.raises(ExportError, match=r"the shared_bottom model cannot be exported to onnx: .*data-dependent"):
        export_run(run_dirs["shared_bottom"], "onnx", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_non_tabular_model_is_refused(runs, tmp_path, monkeypatch):
    import mtlkit.run

    _, run_dirs = runs
    original = mtlkit.run.load_run

    def load_with_other_encoder(run_dir):
        run = original(run_dir)
        run.model.encoder = torch.nn.Identity()
        return run

    monkeypatch.setattr(mtlkit.run, "load_run", load_with_other_encoder)
    with pytest.raises(ExportError, match="only tabular models .* this model's encoder is Identity"):
        export_run(run_dirs["shared_bottom"], "torchscript", tmp_path)


def test_mismatch_is_not_written(runs, tmp_path, monkeypatch):
    """Verification compares the loaded artifact with PyTorch; a difference aborts before anything is replaced."""
    import mtlkit.export

    _, run_dirs = runs
    first = export_run(run_dirs["shared_bottom"], "torchscript", tmp_path)
    before = first.artifact.read_bytes()
    call = mtlkit.export._Runner.__call__
    monkeypatch.setattr(mtlkit.export._Runner, "__call__", lambda self, inputs: [o + 1e-3 for o in call(self, inputs)])
    with pytest.raises(ExportError, match="differs from PyTorch by up to 0.001"):
        export_run(run_dirs["shared_bottom"], "torchscript", tmp_path)
    assert first.artifact.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
