"""`mtlkit serve` on an NLP run: texts in, the records of `mtlkit predict` out, one encoder pass per batch.

A tiny four-kind run (classification on single texts, regression on pairs, tagging, span QA;
tests/nlp_serving_runs.py) is served in process. Served records equal `mtlkit predict`'s on the
same texts; tasks asked together share one forward pass; concurrent requests merged by the
micro-batcher answer as they would alone; bad bodies get their exact 4xx with a message naming
the problem (tests/test_serve_nlp_fuzz.py has the larger corpus).
"""

from __future__ import annotations

import json

import pytest
import torch
from starlette.testclient import TestClient
from typer.testing import CliRunner

from mtlkit.cli import app as cli
from mtlkit.serve import create_app
from mtlkit.serve.text import parse_text_request, run_text_batch

from nlp_serving_runs import NLP, train_tiny_nlp_run
from tiny_bert import head_rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_nlp_run(tmp_path_factory.mktemp("nlp_serve"))


@pytest.fixture(scope="module")
def client(run_dir):
    return TestClient(create_app(run_dir, max_batch=16))


def _counting(app):
    """Wrap the served model's forward: a list of the task names of every forward pass."""
    model = app.state.model
    calls = []
    forward = model.forward

    def counted(inputs, names):
        calls.append(list(names))
        return forward(inputs, names)

    model.forward = counted
    return calls


def test_classification_answers_equal_mtlkit_predict(run_dir, client, tmp_path):
    data = tmp_path / "new.tsv"
    data.write_text("".join(head_rows(NLP / "sst2" / "dev.tsv", 6)))  # header + 5 rows
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(cli, ["predict", str(run_dir), str(data), "--task", "sst2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [line.split("\t")[0] for line in data.read_text().splitlines()[1:]]
    response = client.post("/predict", json={"task": "sst2", "inputs": texts})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    assert len(served) == 5
    for got, want in zip(served, expected):
        assert got["task"] == want["task"] == "sst2" and got["label"] == want["label"]
        assert list(got["probabilities"]) == list(want["probabilities"])
        assert list(got["probabilities"].values()) == pytest.approx(list(want["probabilities"].values()), abs=1e-5)


def test_regression_on_pairs_and_tagging_records(client):
    response = client.post("/predict", json={"task": "stsb", "inputs": [{"text": "A man plays a flute.", "text_pair": "A man plays music."},
                                                                        ["A dog runs.", "A cat sleeps."]]})
    assert response.status_code == 200, response.text
    values = [p["value"] for p in response.json()["predictions"]]
    assert len(values) == 2 and all(isinstance(v, float) for v in values)
    response = client.post("/predict", json={"task": "ner", "inputs": ["Paris is nice in June", {"tokens": ["Bob", "Dylan"]}]})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    labels = set(client.get("/schema").json()["tasks"][2]["labels"])
    assert first["tokens"] == ["Paris", "is", "nice", "in", "June"] and len(first["tags"]) == 5 and set(first["tags"]) <= labels
    assert second["tokens"] == ["Bob", "Dylan"] and len(second["tags"]) == 2


def test_span_qa_answers_are_spans_of_their_context(client):
    contexts = ["The Panthers beat the Broncos in the final game of the season in Denver.",
                " ".join(["Denver is a city in Colorado with many parks and museums."] * 12)]  # several windows
    inputs = [{"id": f"q{i}", "question": "Who won the game?", "context": c} for i, c in enumerate(contexts)]
    response = client.post("/predict", json={"task": "qa", "inputs": inputs})
    assert response.status_code == 200, response.text
    for record, context, i in zip(response.json()["predictions"], contexts, range(2)):
        assert record["task"] == "qa" and record["id"] == f"q{i}"
        assert record["answer"] in context


def test_span_qa_questions_without_ids_keep_their_own_answers(client):
    """Served questions often carry no id: answers are matched by position, not by (repeated) id."""
    contexts = ["Alice founded the company in Paris in 1990.", "Bob Marley sang reggae songs in Jamaica.", "Zebras live in Africa."]
    response = client.post("/predict", json={"task": "qa", "inputs": [{"question": "Who?", "context": c} for c in contexts]})
    assert response.status_code == 200, response.text
    records = response.json()["predictions"]
    assert [r["id"] for r in records] == ["", "", ""]
    assert all(r["answer"] in c for r, c in zip(records, contexts))
    alone = [client.post("/predict", json={"task": "qa", "inputs": [{"question": "Who?", "context": c}]}).json()["predictions"][0]["answer"]
             for c in contexts]
    assert [r["answer"] for r in records] == alone


def test_all_single_text_tasks_share_one_encoder_pass(run_dir):
    app = create_app(run_dir, batching=False)
    calls = _counting(app)
    response = TestClient(app).post("/predict", json={"inputs": ["Paris is nice", "I loved this film"]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [sorted(p) for p in predictions] == [["ner", "sst2"]] * 2  # the single-text tasks, not stsb (pairs) nor qa
    assert calls == [["sst2", "ner"]]  # one forward pass for both tasks
    alone = TestClient(app).post("/predict", json={"task": "sst2", "inputs": ["Paris is nice"]}).json()["predictions"][0]
    assert alone["probabilities"] == pytest.approx(predictions[0]["sst2"]["probabilities"], abs=1e-5)


def test_merged_requests_answer_as_alone_in_one_pass(run_dir):
    app = create_app(run_dir, batching=False)
    model = app.state.model
    bodies = [{"task": "sst2", "inputs": ["a fine film"]}, {"task": "sst2", "inputs": ["bad", "truly a waste of an evening"]},
              {"tasks": ["ner", "sst2"], "inputs": ["Paris is nice"]}, {"task": "qa", "inputs": [{"question": "Who?", "context": "Bob ran."}]},
              {"task": "stsb", "inputs": [["x y", "y"]]}]
    requests = [parse_text_request(json.dumps(b).encode(), model, 16) for b in bodies]
    alone = [json.loads(run_text_batch(model, [r])[0]) for r in requests]
    calls = _counting(app)
    merged = [json.loads(out) for out in run_text_batch(model, requests)]
    assert sorted(map(tuple, calls)) == [("ner",), ("qa",), ("sst2",), ("stsb",)]  # one pass per task, not per request
    for got, want in zip(merged, alone):
        assert json.dumps(got, sort_keys=True).count(":") == json.dumps(want, sort_keys=True).count(":")
        _close(got, want)


def test_merged_all_task_requests_share_one_pass(run_dir):
    app = create_app(run_dir, batching=False)
    model = app.state.model
    requests = [parse_text_request(json.dumps({"inputs": texts}).encode(), model, 16) for texts in (["Paris is nice"], ["a b", "c d e"])]
    calls = _counting(app)
    merged = [json.loads(out)["predictions"] for out in run_text_batch(model, requests)]
    assert calls == [["sst2", "ner"]] and [len(p) for p in merged] == [1, 2]


def _close(got, want):
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _close(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            _close(a, b)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5)
    else:
        assert got == want


def test_concurrent_requests_share_batches(run_dir):
    import asyncio

    import httpx

    app = create_app(run_dir, batch_wait_ms=20)
    calls = _counting(app)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return await asyncio.gather(*[http.post("/predict", json={"task": "sst2", "inputs": [f"film number {i}"]}) for i in range(6)])

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 6
    assert len(calls) < 6 and app.state.batcher.requests == 6  # merged into fewer forward passes


def test_over_long_input_is_413_and_the_server_keeps_serving(client):
    response = client.post("/predict", json={"task": "sst2", "inputs": ["fine", "word " * 120]})
    assert response.status_code == 413
    assert "inputs[1]" in response.json()["detail"] and "max_length" in response.json()["detail"] and "sst2" in response.json()["detail"]
    assert client.post("/predict", json={"task": "sst2", "inputs": ["fine"]}).status_code == 200


def test_health_and_schema(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "pytorch" and health["tasks"] == ["sst2", "stsb", "ner", "qa"]
    schema = client.get("/schema").json()
    assert schema["single_text_tasks"] == ["sst2", "ner"]
    kinds = {t["name"]: (t["kind"], t.get("pairs")) for t in schema["tasks"]}
    assert kinds == {"sst2": ("classification", False), "stsb": ("regression", True), "ner": ("tagging", None), "qa": ("span_qa", None)}


def test_health_turns_503_when_the_checkpoint_changes(tmp_path_factory):
    run = train_tiny_nlp_run(tmp_path_factory.mktemp("nlp_health"))
    client = TestClient(create_app(run))
    assert client.get("/health").status_code == 200
    state = torch.load(run / "best.pt", weights_only=True)
    torch.save(state, run / "best.pt")
    response = client.get("/health")
    assert response.status_code == 503 and "best.pt" in response.json()["reason"]
