"""HTTP fuzz of an NLP run's ``/predict``: malformed and hostile bodies against PyTorch and its ONNX export.

Every body of the table gets its exact status (400: not one strict UTF-8 JSON text; 413: too
many inputs, too many bytes, an input longer than its task's max_length; 422: the wrong shape, an
unknown task, a value a task cannot take) and a ``detail`` naming the problem — never a 5xx, and
the server answers a good request afterwards. Hostile but valid texts get a 200. Add a
:class:`Bad` for every bug found from now on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from mtlkit.serve import create_app

from nlp_serving_runs import train_tiny_nlp_run

MAX_BATCH = 8
MAX_BODY = 64 * 1024
BACKENDS = ("pytorch", "onnx")


@dataclass(frozen=True)
class Bad:
    id: str
    body: bytes
    status: int
    names: tuple[str, ...]


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def to(task: str | None, *inputs: Any) -> bytes:
    return body({"inputs": list(inputs)} if task is None else {"task": task, "inputs": list(inputs)})


QA = {"question": "Who won?", "context": "The Panthers won."}
CASES = [
    # not one strict UTF-8 JSON text: 400
    Bad("empty body", b"", 400, ("empty",)),
    Bad("not json", b"hello", 400, ("malformed JSON",)),
    Bad("trailing garbage", b'{"inputs": ["a"]} x', 400, ("malformed JSON",)),
    Bad("not utf-8", b'{"inputs": ["\xff"]}', 400, ("UTF-8",)),
    Bad("nested deeply", b"[" * 60_000, 400, ("nested too deeply",)),
    Bad("NaN literal is json but a bad input", b'{"inputs": [NaN]}', 422, ("inputs[0]", "number")),
    # the wrong shape: 422
    Bad("a list body", body(["a"]), 422, ("JSON object",)),
    Bad("no inputs", body({"task": "sst2"}), 422, ('missing "inputs"',)),
    Bad("inputs not a list", body({"task": "sst2", "inputs": "a fine film"}), 422, ('"inputs" must be a list', "string")),
    Bad("empty batch", to("sst2"), 422, ("empty",)),
    Bad("unknown field", body({"task": "sst2", "inputs": ["a"], "rows": []}), 422, ("'rows'",)),
    Bad("unknown task", to("nope", "a"), 422, ("no task 'nope'", "sst2")),
    Bad("auxiliary task", to("lm", "a"), 422, ("no task 'lm'",)),
    Bad("task not a string", body({"task": 3, "inputs": ["a"]}), 422, ('"task"', "number")),
    Bad("task and tasks", body({"task": "sst2", "tasks": ["ner"], "inputs": ["a"]}), 422, ("not both",)),
    Bad("tasks empty", body({"tasks": [], "inputs": ["a"]}), 422, ('"tasks"',)),
    Bad("tasks twice", body({"tasks": ["ner", "ner"], "inputs": ["a"]}), 422, ("twice",)),
    Bad("tasks unknown", body({"tasks": ["ner", "pos"], "inputs": ["a"]}), 422, ("no task 'pos'",)),
    # a value a task cannot take: 422 naming the input
    Bad("null text", to("sst2", "a", None), 422, ("inputs[1]", "null")),
    Bad("number text", to("sst2", 5), 422, ("inputs[0]", "number")),
    Bad("boolean text", to("sst2", True), 422, ("inputs[0]", "boolean")),
    Bad("object text", to("sst2", {"txt": "a"}), 422, ("inputs[0]", "'txt'")),
    Bad("empty text", to("sst2", "   "), 422, ("inputs[0]", "empty")),
    Bad("lone surrogate", b'{"task": "sst2", "inputs": ["a \\ud800 b"]}', 422, ("inputs[0]", "surrogate")),
    Bad("pair to a single-text task", to("sst2", ["a", "b"]), 422, ("single texts",)),
    Bad("pair task given one text", to("stsb", "only one text"), 422, ("inputs[0]", "text pairs")),
    Bad("pair of three", to("stsb", ["a", "b", "c"]), 422, ("3 items",)),
    Bad("pair with a number", to("stsb", {"text": "a", "text_pair": 2}), 422, ("text_pair", "number")),
    Bad("all tasks, a number", to(None, 1), 422, ("inputs[0]", "task 'sst2'")),
    Bad("qa given a string", to("qa", "who?"), 422, ("inputs[0]", "question")),
    Bad("qa without context", to("qa", {"question": "who?"}), 422, ("inputs[0]", '"context"')),
    Bad("qa with a bad id", to("qa", {**QA, "id": [1]}), 422, ('"id"',)),
    Bad("tagging empty tokens", to("ner", {"tokens": []}), 422, ("tokens is empty",)),
    Bad("tagging number token", to("ner", {"tokens": ["a", 1]}), 422, ("tokens[1]", "number")),
    Bad("tagging token with space", to("ner", {"tokens": ["a b"]}), 422, ("whitespace",)),
    # too much: 413
    Bad("too many inputs", to("sst2", *["a"] * (MAX_BATCH + 1)), 413, ("9 inputs", "limit of 8")),
    Bad("body over the limit", to("sst2", "a" * MAX_BODY), 413, ("exceeds the limit",)),
    Bad("text over max_length", to("sst2", "fine", "word " * 120), 413, ("inputs[1]", "max_length", "sst2")),
    Bad("tokens over max_length", to("ner", {"tokens": ["w"] * 60}), 413, ("inputs[0]", "max_length", "ner")),
    Bad("question over max_question_length", to("qa", {"question": "who " * 30, "context": "x"}), 413, ("max_question_length",)),
    Bad("context over the window limit", to("qa", {"question": "who?", "context": "word " * 1200}), 413, ("windows",)),
]
HOSTILE = {
    "emoji": "🎬🍿 great 👍",
    "right to left": "فيلم رائع",
    "one huge word": "a" * 5000,
    "control characters": "a\u0000b\u0007c",
    "punctuation only": "!?!?...",
    "zero width": "\u200b\u200b x",
}


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    from mtlkit.nlp.export import export_nlp_run

    run = train_tiny_nlp_run(tmp_path_factory.mktemp("nlp_fuzz"))
    export = export_nlp_run(run).directory
    return {backend: TestClient(create_app(directory, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY))
            for backend, directory in (("pytorch", run), ("onnx", export))}


def test_the_corpus_is_unambiguous():
    assert len({c.id for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_body(clients, backend, case):
    client = clients[backend]
    response = client.post("/predict", content=case.body, headers={"content-type": "application/json"})
    assert response.status_code == case.status, response.text
    detail = response.json()["detail"]
    assert all(name in detail for name in case.names), detail
    assert client.post("/predict", json={"task": "sst2", "inputs": ["still serving"]}).status_code == 200


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_but_valid_text(clients, backend, name):
    response = clients[backend].post("/predict", json={"inputs": [HOSTILE[name]]})
    assert response.status_code == 200, response.text
    record = response.json()["predictions"][0]
    assert set(record) == {"sst2", "ner"}
    assert sum(record["sst2"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert len(record["ner"]["tags"]) == len(record["ner"]["tokens"]) == len(HOSTILE[name].split())
