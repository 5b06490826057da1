"""Micro-batching: concurrent requests share one forward pass, and each still gets exactly its own answer.

In process (httpx over ASGI, one event loop), so "concurrent" is exact: the requests are all
queued before the batch runs. Batched answers equal one-by-one answers of an unbatched app, on
the PyTorch run and on its ONNX export; a bad request never fails its batch-mates; a full queue
is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from mtlkit.cli import app as cli
from mtlkit.errors import ConfigError, DataError
from mtlkit.export import export_run
from mtlkit.serve import create_app
from mtlkit.serve.batching import render
from mtlkit.serve.predictor import ServedTask
from mtlkit.serve.rows import rows_to_table
from mtlkit.tasks import TaskKind

from serving_runs import holdout, shared_run

BACKENDS = ("pytorch", "onnx")


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    data, run_dir = shared_run(tmp_path_factory, "mmoe_sequence")
    onnx = export_run(run_dir, "onnx", tmp_path_factory.mktemp("batching-onnx")).directory
    return data, {"pytorch": run_dir, "onnx": onnx}


def json_rows(table) -> list[dict]:
    return json.loads(json.dumps(table.to_pylist()))


async def _post_all(app, bodies: list) -> list[httpx.Response]:
    """Every body at once, to one app, on one event loop."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await asyncio.gather(*(client.post("/predict", json=body) for body in bodies))


def post_all(app, bodies: list) -> list[httpx.Response]:
    return asyncio.run(_post_all(app, bodies))


def counting_forwards(app) -> list[int]:
    """Rows of every forward pass the app's model runs, recorded."""
    predictor, calls = app.state.predictor, []
    forward = predictor.forward
    predictor.forward = lambda inputs: calls.append(len(next(iter(inputs.values())))) or forward(inputs)
    return calls


def assert_close(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for key in w:
            if key == "topic":
                assert g[key]["class"] == w[key]["class"]
                np.testing.assert_allclose(g[key]["probabilities"], w[key]["probabilities"], rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_allclose(g[key], w[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_requests_share_one_forward_pass_and_equal_one_by_one(directories, backend):
    data, paths = directories
    rows = json_rows(holdout(data).slice(0, 20))
    # 1-row requests, two 3-row ones, and requests whose columns type differently (item as a string,
    # history as a list): one batch of 24 rows, encoded in three column-type groups.
    bodies = [{"rows": [row]} for row in rows[:14]] + [{"rows": rows[14:17]}, {"rows": rows[17:20]}]
    bodies += [{"rows": [{**rows[i], "item": str(rows[i]["item"])}]} for i in range(3)]
    bodies += [{"rows": [{**rows[i], "hist": [h for h in rows[i]["hist"].split("|") if h]}]} for i in range(3, 5)]
    total = sum(len(b["rows"]) for b in bodies)
    batched = create_app(paths[backend], threads=1, batch_rows=total, batch_wait_ms=1000)
    forwards = counting_forwards(batched)
    answers = post_all(batched, bodies)
    assert [a.status_code for a in answers] == [200] * len(bodies)
    assert forwards == [total] and batched.state.batcher.batches == 1  # one forward pass for all of them
    unbatched = create_app(paths[backend], threads=1, batching=False)
    one_by_one = [post_all(unbatched, [body])[0].json()["predictions"] for body in bodies]
    for answer, alone, body in zip(answers, one_by_one, bodies):
        assert len(answer.json()["predictions"]) == len(body["rows"])
        assert_close(answer.json()["predictions"], alone)


def test_batches_close_at_batch_rows(directories):
    data, paths = directories
    rows = json_rows(holdout(data).slice(0, 10))
    app = create_app(paths["pytorch"], threads=1, batch_rows=4, batch_wait_ms=1000)
    forwards = counting_forwards(app)
    answers = post_all(app, [{"rows": [row]} for row in rows] + [{"rows": rows[:6]}])  # 6 rows > 4: alone
    assert all(a.status_code == 200 for a in answers)
    assert sorted(forwards) == [2, 4, 4, 6] and sum(forwards) == 16


def test_a_bad_request_does_not_fail_its_batch_mates(tmp_path_factory):
    """One request's value overflows the scaling (found only when encoding the merged batch), one is malformed."""
    data, run_dir = shared_run(tmp_path_factory, "plain_numeric")
    rows = [{k: v for k, v in row.items() if k in ("user", "item", "price")} for row in json_rows(holdout(data).slice(0, 6))]
    bodies = [{"rows": [row]} for row in rows[:4]] + [{"rows": [rows[4], {**rows[5], "price": 1e308}]}, {"rows": [{"user": 1}]}]
    app = create_app(run_dir, threads=1, batch_rows=5, batch_wait_ms=1000)
    forwards = counting_forwards(app)
    answers = post_all(app, bodies)
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 422, 422]
    assert answers[4].json()["detail"].startswith("rows[1]: feature 'price': the value is out of range")
    assert answers[5].json()["detail"] == "rows[0]: missing feature 'item' (send null for a missing value)"
    assert forwards == [4]  # the good rows only, in one pass
    alone = create_app(run_dir, threads=1, batching=False)
    for answer, body in zip(answers[:4], bodies[:4]):
        assert_close(answer.json()["predictions"], post_all(alone, [body])[0].json()["predictions"])


def test_an_encoding_failure_is_retried_per_request(directories, monkeypatch):
    data, paths = directories
    rows = json_rows(holdout(data).slice(0, 4))
    app = create_app(paths["pytorch"], threads=1, batch_rows=4, batch_wait_ms=1000)
    predictor, encode = app.state.predictor, app.state.predictor.encode

    def fragile(table, source):
        if "boom" in table.column("user").to_pylist():
            raise DataError("column 'user': boom")
        return encode(table, source)

    monkeypatch.setattr(predictor, "encode", fragile)
    answers = post_all(app, [{"rows": [rows[0]]}, {"rows": [{**rows[1], "user": "boom"}]}, {"rows": [rows[2]]}, {"rows": [rows[3]]}])
    assert [a.status_code for a in answers] == [200, 422, 200, 200]
    assert answers[1].json()["detail"] == "the rows cannot be encoded: column 'user': boom"


def test_a_model_failure_is_retried_per_request(directories, monkeypatch):
    """A model that fails on one request's rows (a bug) fails that request alone, answered and logged, not the batch."""
    data, paths = directories
    rows = json_rows(holdout(data).slice(0, 3))
    rows[1]["price"] = 12345.678
    app = create_app(paths["pytorch"], threads=1, batch_rows=3, batch_wait_ms=1000)
    predictor, forward = app.state.predictor, app.state.predictor.forward
    poisoned = predictor.encode(rows_to_table(predictor.schema, [rows[1]]), "test")["numeric"][0, 0]

    def fragile(inputs):
        if np.isin(inputs["numeric"][:, 0], [poisoned]).any():  # the merged batch, then the request alone
            raise RuntimeError("model bug")
        return forward(inputs)

    monkeypatch.setattr(predictor, "forward", fragile)
    answers = post_all(app, [{"rows": [row]} for row in rows])
    assert [a.status_code for a in answers] == [200, 500, 200]
    assert answers[1].json() == {"detail": "internal error while running the model"}


def test_a_full_queue_is_a_503_with_retry_after(directories):
    data, paths = directories
    rows = json_rows(holdout(data).slice(0, 4))
    app = create_app(paths["pytorch"], threads=1, batch_rows=1, batch_wait_ms=0, queue_size=2)
    app.state.batcher.inline_rows = 0  # batches run in the model thread, so the event loop keeps taking requests
    predictor, forward = app.state.predictor, app.state.predictor.forward
    entered, release = threading.Event(), threading.Event()

    def slow(inputs):
        entered.set()
        release.wait(30)
        return forward(inputs)

    predictor.forward = slow

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as client:
            first = asyncio.ensure_future(client.post("/predict", json={"rows": [rows[0]]}))
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)  # the model holds the first request
            queued = [asyncio.ensure_future(client.post("/predict", json={"rows": [row]})) for row in rows[1:3]]
            while app.state.batcher.waiting < 2:
                await asyncio.sleep(0.01)
            refused = await client.post("/predict", json={"rows": [rows[3]]})
            release.set()
            return refused, await first, await asyncio.gather(*queued)

    refused, first, queued = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["detail"] == "busy: 2 requests are already waiting for the model; retry shortly"
    assert first.status_code == 200 and [q.status_code for q in queued] == [200, 200]


@pytest.mark.parametrize("option, value, message", [
    ("batch_rows", 0, "--batch-rows must be an integer of at least 1, got 0"),
    ("queue_size", 0, "--queue-size must be an integer of at least 1, got 0"),
    ("batch_wait_ms", 1001, "--batch-wait-ms must be between 0 and 1000, got 1001"),
    ("batch_wait_ms", -1, "--batch-wait-ms must be between 0 and 1000, got -1"),
    ("max_body_bytes", 0, "--max-body-bytes must be an integer of at least 1, got 0"),
    ("max_batch", 0, "--max-batch must be an integer of at least 1, got 0"),
])
def test_options_are_checked_before_loading(tmp_path, option, value, message):
    with pytest.raises(ConfigError) as error:
        create_app(tmp_path / "no-such-run", **{option: value})
    assert str(error.value) == message


@pytest.mark.parametrize("arguments, message", [
    (["--batch-rows", "0"], "Invalid value for '--batch-rows'"),
    (["--queue-size", "-3"], "Invalid value for '--queue-size'"),
    (["--batch-wait-ms", "5000"], "Invalid value for '--batch-wait-ms'"),
    (["--workers", "0"], "Invalid value for '--workers'"),
])
def test_cli_serve_refuses_bad_batching_options(directories, arguments, message):
    _, paths = directories
    result = CliRunner().invoke(cli, ["serve", str(paths["pytorch"]), *arguments])
    assert result.exit_code == 2 and message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_cli_serve_passes_batching_options(directories, monkeypatch):
    import uvicorn

    _, paths = directories
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    arguments = ["--batch-rows", "64", "--batch-wait-ms", "0.5", "--queue-size", "9", "--max-body-bytes", "1000", "--show-paths"]
    result = CliRunner().invoke(cli, ["serve", str(paths["onnx"]), "--threads", "1", *arguments])
    assert result.exit_code == 0, result.output
    options = started["app"].state.options
    assert (options.batch_rows, options.batch_wait_ms, options.queue_size, options.max_body_bytes, options.show_paths) == (64, 0.5, 9, 1000, True)
    assert started["access_log"] is False
    batcher = started["app"].state.batcher
    assert (batcher.max_rows, batcher.max_wait_s, batcher.queue_size) == (64, 0.0005, 9)


def test_no_batching_option(directories, monkeypatch):
    import uvicorn

    _, paths = directories
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    result = CliRunner().invoke(cli, ["serve", str(paths["pytorch"]), "--no-batching", "--access-log"])
    assert result.exit_code == 0, result.output
    assert started["app"].state.batcher is None and started["access_log"] is True


def test_outputs_that_are_not_finite_are_null():
    """NaN/inf (an overflowing model) are not JSON: null, and a multiclass row with NaN probabilities has no class."""
    stub = type("P", (), {"tasks": [ServedTask("click", TaskKind.BINARY, "probability"),
                                    ServedTask("topic", TaskKind.MULTICLASS, "class and probabilities", 2)]})()
    columns = {"click": np.array([0.5, np.nan, np.inf], np.float32), "topic": np.array([1, 0, 0]),
               "topic_p0": np.array([0.25, np.nan, 1.0], np.float32), "topic_p1": np.array([0.75, np.nan, 0.0], np.float32),
               "fused_score": np.array([1.0, -np.inf, 2.0], np.float32)}
    [whole], (first, rest) = render(stub, columns, [0, 3]), render(stub, columns, [0, 1, 3])
    answer = json.loads(whole)["predictions"]
    assert answer == [
        {"click": 0.5, "topic": {"class": 1, "probabilities": [0.25, 0.75]}, "fused_score": 1.0},
        {"click": None, "topic": {"class": None, "probabilities": [None, None]}, "fused_score": None},
        {"click": None, "topic": {"class": 0, "probabilities": [1.0, 0.0]}, "fused_score": 2.0},
    ]
    assert json.loads(first)["predictions"] == answer[:1] and json.loads(rest)["predictions"] == answer[1:]
    assert not math.isnan(answer[0]["click"])
