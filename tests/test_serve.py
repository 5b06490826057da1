"""`mtlkit serve`: the real uvicorn server on a loopback port, spoken to over HTTP with httpx.

Served predictions equal `mtlkit predict` (predict_table) on the same rows; every bad request gets a
4xx with a message, never a 500.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import fastapi  # noqa: F401  (the test extra installs these: a missing one fails, never skips)
import httpx
import numpy as np
import pytest
import uvicorn
from typer.testing import CliRunner

from mtlkit.cli import app as cli  # noqa: E402
from mtlkit.run import load_run, predict_table  # noqa: E402
from mtlkit.serve import create_app  # noqa: E402

from serving_runs import holdout, shared_run  # noqa: E402

MAX_BATCH = 50


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return shared_run(tmp_path_factory, "mmoe_sequence")


@contextmanager
def running(app):
    """``app`` under uvicorn in a thread, on a socket bound to a free loopback port (no race for the port): an httpx client."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            yield client
    finally:
        instance.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(trained):
    _, run_dir = trained
    with running(create_app(run_dir, max_batch=MAX_BATCH)) as client:
        yield client


def json_rows(table) -> list[dict]:
    """Rows as a client would send them: JSON values (lists stay lists, missing numbers are null)."""
    return json.loads(json.dumps(table.to_pylist()))


def served(client, rows) -> list[dict]:
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_health_and_schema(server):
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "pytorch" and health["tasks"] == ["click", "buy", "topic", "watch"]
    schema = server.get("/schema").json()
    features = {f["name"]: f for f in schema["features"]}
    assert {n: f["type"] for n, f in features.items()} == {
        "user": "categorical", "item": "categorical", "price": "numeric", "hist": "sequence", "tags": "sequence"}
    assert features["user"]["vocabulary_size"] == 20 and features["hist"]["shares_vocabulary_with"] == "item"
    assert schema["ignored_features"] == ["pos"] and schema["max_batch"] == MAX_BATCH
    assert [t["name"] for t in schema["tasks"]] == ["click", "buy", "topic", "watch"]
    assert schema["fused_score"]["kind"] == "product"


def test_predictions_equal_offline_predict(server, trained):
    data, run_dir = trained
    table = holdout(data).slice(0, MAX_BATCH)
    predictions = served(server, json_rows(table))
    offline = predict_table(load_run(run_dir), table)
    assert len(predictions) == MAX_BATCH
    for name in ("click", "buy", "watch", "fused_score"):
        np.testing.assert_allclose([p[name] for p in predictions], offline[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert [p["topic"]["class"] for p in predictions] == offline["topic"].tolist()
    probabilities = np.array([p["topic"]["probabilities"] for p in predictions])
    np.testing.assert_allclose(probabilities, np.stack([offline[f"topic_p{c}"] for c in range(3)], 1), rtol=1e-6, atol=1e-7)
    assert set(predictions[0]) == {"click", "buy", "topic", "watch", "fused_score"}


def test_batch_of_one_and_bias_features_ignored(server, trained):
    data, _ = trained
    rows = json_rows(holdout(data).slice(0, 4))
    batch = served(server, rows)
    single = served(server, rows[2:3])
    assert len(single) == 1 and single[0]["click"] == pytest.approx(batch[2]["click"], abs=1e-6)
    with_position = served(server, [{**row, "pos": 1, "ad_id": "x"} for row in rows])  # position and unknown keys: ignored
    assert [p["click"] for p in with_position] == [p["click"] for p in batch]


def test_unseen_categories_go_to_the_oov_bucket(server, trained):
    data, _ = trained
    row = json_rows(holdout(data).slice(0, 1))[0]
    unseen = {**row, "user": "never-seen", "item": 10_000, "hist": "777|888", "tags": ["no-such-tag"]}
    missing = {**row, "user": None, "item": None, "hist": None, "tags": []}
    a, b = served(server, [unseen, missing])
    for key in ("click", "buy", "watch", "fused_score"):  # OOV id 0 is the missing id 0: the same prediction
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert a["topic"]["probabilities"] == pytest.approx(b["topic"]["probabilities"], abs=1e-6)
    assert 0 < a["click"] < 1 and math.isfinite(a["watch"])


def test_typed_values_like_offline(server, trained):
    """Integral floats are the same category as integers (as a CSV reader types them); numbers may be ints."""
    data, _ = trained
    row = json_rows(holdout(data).slice(0, 1))[0]
    as_float = {**row, "item": float(row["item"]), "hist": [int(i) for i in row["hist"].split("|") if i]}
    assert served(server, [as_float])[0]["click"] == pytest.approx(served(server, [row])[0]["click"], abs=1e-6)


BAD_REQUESTS = {
    "malformed JSON": (b'{"rows": [', 400, "malformed JSON"),
    "empty body": (b"", 400, "empty request body"),
    "not an object": (b"[1, 2]", 422, 'JSON object with a "rows" list'),
    "no rows key": (b'{"data": []}', 422, 'JSON object with a "rows" list'),
    "rows not a list": (b'{"rows": {"user": "u1"}}', 422, '"rows" must be a list of objects, got object'),
    "empty rows": (b'{"rows": []}', 422, '"rows" is empty'),
    "row not an object": (b'{"rows": [[1, 2]]}', 422, "rows[0] must be an object of feature values, got list"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_requests(server, case):
    body, status, message = BAD_REQUESTS[case]
    response = server.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and message in response.json()["detail"], response.text


def _row_with(server_rows, **change):
    row = dict(server_rows[0])
    for key, value in change.items():
        if value is ...:
            del row[key]
        else:
            row[key] = value
    return row


BAD_VALUES = {
    "missing feature": ({"price": ...}, "rows[1]: missing feature 'price' (send null for a missing value)"),
    "number as string": ({"price": "12.5"}, "rows[1]: feature 'price' must be a number or null, got string"),
    "boolean number": ({"price": True}, "feature 'price' must be a number or null, got boolean"),
    "object category": ({"user": {"id": 3}}, "rows[1]: feature 'user' must be a string, number, boolean or null, got object"),
    "number as sequence": ({"tags": 7}, "rows[1]: feature 'tags' must be a list of items (strings or numbers) or null, got number"),
    "nested sequence": ({"tags": [["a"]]}, "rows[1]: feature 'tags' items must be strings or numbers, got list"),
    "huge integer": ({"item": 2**70}, "feature 'item'"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values(server, trained, case):
    data, _ = trained
    rows = json_rows(holdout(data).slice(0, 2))
    change, message = BAD_VALUES[case]
    rows[1] = _row_with(rows[1:], **change)
    response = server.post("/predict", json={"rows": rows})
    assert response.status_code == 422 and message in response.json()["detail"], response.text


def test_oversized_batch(server, trained):
    data, _ = trained
    rows = json_rows(holdout(data).slice(0, 1)) * (MAX_BATCH + 1)
    response = server.post("/predict", json={"rows": rows})
    assert response.status_code == 413
    assert response.json()["detail"] == f"{MAX_BATCH + 1} rows exceed the batch limit of {MAX_BATCH}: split the request"


@contextmanager
def cli_server(directory, *options: str):
    """`mtlkit serve DIRECTORY OPTIONS` as a user runs it, in its own process: (base URL, process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from mtlkit.cli import main; main()", "serve", str(directory), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mtlkit serve did not come up"
                time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        process.wait(30)


def test_cli_serve_starts_and_answers(trained):
    data, run_dir = trained
    with cli_server(run_dir, "--max-batch", "8", "--threads", "1") as (url, _):
        rows = json_rows(holdout(data).slice(0, 9))
        assert httpx.post(f"{url}/predict", json={"rows": rows[:8]}, timeout=10).status_code == 200
        assert httpx.post(f"{url}/predict", json={"rows": rows}, timeout=10).status_code == 413


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def test_cli_serve_with_two_workers(trained):
    """--workers 2: two processes (uvicorn's), each with its own model, answer on one port, the same answers."""
    data, run_dir = trained
    rows = json_rows(holdout(data).slice(0, 4))
    with cli_server(run_dir, "--workers", "2", "--threads", "1") as (url, process):
        answers = [httpx.post(f"{url}/predict", json={"rows": rows}, timeout=20) for _ in range(6)]
        workers = [pid for pid in _children(process.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
        assert len(workers) == 2, workers
    assert all(a.status_code == 200 and a.json() == answers[0].json() for a in answers)
    assert process.returncode is not None


def test_cli_serve_bad_run(tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "not a trained mtlkit run (no config.yaml)" in result.output
