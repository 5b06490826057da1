"""`mtlkit serve EXPORT_DIR`: an export served with onnxruntime / torch.jit answers like the run it came from.

Two real uvicorn servers on loopback ports, the run directory (PyTorch) and its ONNX export, get
the same requests: the same predictions within the export's tolerance (1e-5 + 1e-5·|value|), the
same /schema, the same 4xx (status and message) for every bad request.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime  # noqa: F401  (the test extra installs it: a missing one fails, never skips)
import pytest
from typer.testing import CliRunner

from mtlkit.cli import app as cli
from mtlkit.export import ATOL, RTOL, export_run
from mtlkit.serve import create_app

from serving_runs import holdout, shared_run
from test_serve import BAD_REQUESTS, BAD_VALUES, MAX_BATCH, _row_with, json_rows, running, served


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return shared_run(tmp_path_factory, "mmoe_sequence")


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """format → export directory of the MMoE run (sequences, calibration, multiclass, product fusion)."""
    _, run_dir = trained
    return {f: export_run(run_dir, f, tmp_path_factory.mktemp(f"serve-{f}")).directory for f in ("onnx", "torchscript")}


@pytest.fixture(scope="module")
def servers(trained, exports):
    """(run-directory server, ONNX-export server), both with the same batch limit."""
    _, run_dir = trained
    with running(create_app(run_dir, max_batch=MAX_BATCH)) as run_server, \
            running(create_app(exports["onnx"], max_batch=MAX_BATCH, threads=1)) as onnx_server:
        yield run_server, onnx_server


def assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) and all(set(g) == set(w) for g, w in zip(got, want))
    for key in want[0]:
        if key == "topic":  # multiclass: the class and its probabilities
            assert [g[key]["class"] for g in got] == [w[key]["class"] for w in want]
            np.testing.assert_allclose([g[key]["probabilities"] for g in got], [w[key]["probabilities"] for w in want],
                                       rtol=RTOL, atol=ATOL, err_msg=key)
        else:
            np.testing.assert_allclose([g[key] for g in got], [w[key] for w in want], rtol=RTOL, atol=ATOL, err_msg=key)


def test_health_names_the_backend(servers, trained, exports):
    run_server, onnx_server = servers
    run_health, onnx_health = run_server.get("/health").json(), onnx_server.get("/health").json()
    assert run_health["backend"] == "pytorch" and onnx_health["backend"] == "onnx"
    assert onnx_health["status"] == "ok" and onnx_health["model"] == exports["onnx"].name
    assert "export" not in onnx_health and "run" not in onnx_health  # no paths unless asked (--show-paths)
    assert onnx_health["tasks"] == run_health["tasks"] and onnx_health["backbone"] == run_health["backbone"] == "mmoe"


def test_health_shows_paths_when_asked(trained, exports):
    from starlette.testclient import TestClient

    health = TestClient(create_app(exports["onnx"], show_paths=True)).get("/health").json()
    assert health["export"] == str(exports["onnx"].resolve())
    assert health["run"] == str(trained[1].resolve())  # the run the export was made from


def test_schema_equals_the_run_servers(servers):
    run_server, onnx_server = servers
    schema = onnx_server.get("/schema").json()
    assert schema == run_server.get("/schema").json()
    topic = next(t for t in schema["tasks"] if t["name"] == "topic")
    assert topic == {"name": "topic", "kind": "multiclass", "output": "class and probabilities", "n_classes": 3}
    assert schema["fused_score"] == {"kind": "product", "weights": {"click": 1.0, "watch": 0.5}, "offsets": {"watch": 1.0}}


def test_predictions_equal_the_run_servers(servers, trained):
    data, _ = trained
    run_server, onnx_server = servers
    rows = json_rows(holdout(data).slice(0, MAX_BATCH))
    assert_same_predictions(served(onnx_server, rows), served(run_server, rows))
    assert_same_predictions(served(onnx_server, rows[7:8]), served(run_server, rows[7:8]))  # batch of 1
    unseen = {**rows[0], "user": "never-seen", "item": 10_000, "hist": "777|888", "tags": None, "price": None}
    assert_same_predictions(served(onnx_server, [unseen]), served(run_server, [unseen]))


def _same_answer(servers, **request) -> int:
    run_server, onnx_server = servers
    want, got = run_server.post("/predict", **request), onnx_server.post("/predict", **request)
    assert (got.status_code, got.json()) == (want.status_code, want.json())
    return got.status_code


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_requests_like_the_run_server(servers, case):
    body, status, _ = BAD_REQUESTS[case]
    assert _same_answer(servers, content=body, headers={"content-type": "application/json"}) == status


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_like_the_run_server(servers, trained, case):
    data, _ = trained
    rows = json_rows(holdout(data).slice(0, 2))
    rows[1] = _row_with(rows[1:], **BAD_VALUES[case][0])
    assert _same_answer(servers, json={"rows": rows}) == 422


def test_oversized_batch_like_the_run_server(servers, trained):
    data, _ = trained
    assert _same_answer(servers, json={"rows": json_rows(holdout(data).slice(0, 1)) * (MAX_BATCH + 1)}) == 413


def test_torchscript_export_serves_the_same(trained, exports):
    data, run_dir = trained
    rows = json_rows(holdout(data).slice(0, 20))
    with running(create_app(run_dir, max_batch=MAX_BATCH)) as run_server, \
            running(create_app(exports["torchscript"], max_batch=MAX_BATCH)) as script_server:
        assert script_server.get("/health").json()["backend"] == "torchscript"
        assert script_server.get("/schema").json() == run_server.get("/schema").json()
        assert_same_predictions(served(script_server, rows), served(run_server, rows))


def test_cli_serve_detects_an_export(exports, monkeypatch):
    """`mtlkit serve EXPORT_DIR --threads 1` builds the ONNX-backed app (uvicorn.run stubbed: no port opened)."""
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    result = CliRunner().invoke(cli, ["serve", str(exports["onnx"]), "--port", "8123", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert started["app"].state.predictor.backend == "onnx" and started["port"] == 8123


def test_cli_serve_neither_run_nor_export(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")  # an artifact alone is not an export
    result = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "not a trained mtlkit run (no config.yaml) nor an mtlkit export (no manifest.json)" in message
    assert "Traceback" not in result.output


def test_cli_serve_unsupported_manifest(exports, tmp_path):
    directory = shutil.copytree(exports["onnx"], tmp_path / "export")
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "manifest_version": 99}))
    result = CliRunner().invoke(cli, ["serve", str(directory)])
    assert result.exit_code == 2 and "unsupported manifest version 99" in " ".join(result.output.split()), result.output
