"""``/health`` checks the files the model was loaded from, and shows no absolute path unless asked.

It used to answer "ok" after the run directory was deleted, and to show absolute paths.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from starlette.testclient import TestClient

from mtlkit.export import export_run
from mtlkit.serve import create_app

from serving_runs import holdout, shared_run
from test_serve import json_rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return shared_run(tmp_path_factory, "mmoe_sequence")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The run's ONNX export, made once (exporting takes seconds; copying it, milliseconds)."""
    return export_run(trained[1], "onnx", tmp_path_factory.mktemp("health") / "onnx").directory


@pytest.fixture()
def copies(trained, exported, tmp_path):
    """A private copy of the run and of its ONNX export (the tests delete and replace their files)."""
    run = shutil.copytree(trained[1], tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    return {"pytorch": run, "onnx": shutil.copytree(exported, tmp_path / "onnx")}


@pytest.mark.parametrize("backend", ["pytorch", "onnx"])
def test_no_absolute_paths_unless_asked(copies, trained, tmp_path, backend):
    plain = TestClient(create_app(copies[backend])).get("/health")
    assert plain.status_code == 200 and plain.json()["status"] == "ok"
    assert str(tmp_path) not in plain.text and "run" not in plain.json() and "export" not in plain.json()
    assert plain.json()["model"] == copies[backend].name
    shown = TestClient(create_app(copies[backend], show_paths=True)).get("/health").json()
    # an export names the run it was made from (its manifest's record), a run itself
    assert shown["run"] == str((copies["pytorch"] if backend == "pytorch" else trained[1]).resolve())
    assert shown.get("export") == (None if backend == "pytorch" else str(copies["onnx"].resolve()))


@pytest.mark.parametrize("backend, removed", [("pytorch", None), ("pytorch", "best.pt"), ("onnx", None), ("onnx", "model.onnx"),
                                              ("onnx", "schema.json")])
def test_gone_model_files_are_a_503(copies, trained, tmp_path, backend, removed):
    """The directory deleted (or one file of it): 503 with the reason; the model in memory still answers."""
    client = TestClient(create_app(copies[backend]))
    assert client.get("/health").json()["status"] == "ok"
    if removed is None:
        shutil.rmtree(copies[backend])
    else:
        os.remove(copies[backend] / removed)
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    name = removed or ("config.yaml" if backend == "pytorch" else "manifest.json")
    assert health.json()["reason"] == f"model file {name} is gone (the run or export directory was moved or deleted)"
    assert str(tmp_path) not in health.text
    rows = json_rows(holdout(trained[0]).slice(0, 2))
    assert client.post("/predict", json={"rows": rows}).status_code == 200


def test_a_replaced_model_file_is_a_503(copies, tmp_path):
    """A retrained best.pt in place: the server still serves the model it loaded, and says so."""
    client = TestClient(create_app(copies["pytorch"], show_paths=True))
    best = copies["pytorch"] / "best.pt"
    best.write_bytes(best.read_bytes() + b"\0")
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["reason"] == (f"model file {best.resolve()} changed since the server loaded it: "
                                       "restart the server to serve it")


def test_health_says_how_it_batches(copies):
    health = TestClient(create_app(copies["pytorch"], batch_rows=64, batch_wait_ms=1.5, queue_size=7)).get("/health").json()
    assert health["batching"] == {"max_rows": 64, "max_wait_ms": 1.5, "queue_size": 7}
    assert TestClient(create_app(copies["pytorch"], batching=False)).get("/health").json()["batching"] is False
    assert json.dumps(health)  # plain JSON, nothing else
