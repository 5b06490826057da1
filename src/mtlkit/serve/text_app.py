"""The FastAPI application of an NLP run or its ONNX export: ``/predict``, ``/health``, ``/schema``.

The same contract as tabular serving (:mod:`mtlkit.serve.app`): the body is read under the byte
limit as it arrives, parsed as strict UTF-8 JSON, checked into a
:class:`~mtlkit.serve.text.TextRequest` (tokenized here, on the server; over-long inputs
refused), then run — merged with concurrent requests by the bounded-queue micro-batcher
(:class:`~mtlkit.serve.batching.MicroBatcher`, ``batch_rows`` / ``batch_wait_ms`` /
``queue_size``) unless batching is off. Errors are 400 (not JSON), 413 (body, input count, or an
input longer than its task's ``max_length``), 422 (unknown task, wrong shape or type, a pair
task given one text, an empty batch) with ``{"detail": ...}``, and 503 with ``Retry-After`` when
the queue is full — never a 500 for anything a client sends. ``/health`` names the backend
(``pytorch`` or ``onnx``) and turns 503 when the model files change; ``/schema`` lists the tasks,
what each takes and answers, and the limits.

Example (needs a trained NLP run)::

    app = create_text_app("runs/glue", ServeOptions())
    # POST /predict {"task": "sst2", "inputs": ["a fine film"]}
    # -> {"predictions": [{"task": "sst2", "label": "1", "probabilities": {"0": 0.1, "1": 0.9}}]}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from mtlkit.serve.app import INLINE_BYTES, add_routes, service_identity
from mtlkit.serve.batching import MicroBatcher
from mtlkit.serve.body import read_body
from mtlkit.serve.options import ServeOptions
from mtlkit.serve.rows import RequestError
from mtlkit.serve.text import SHAPE, TextModel, TextRequest, load_text_model, parse_text_request, run_text_batch

log = logging.getLogger("mtlkit.serve")

_REQUEST_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"],
    "properties": {"task": {"type": "string"}, "tasks": {"type": "array", "items": {"type": "string"}},
                   "inputs": {"type": "array", "minItems": 1}},
}}}}}


def text_schema(model: TextModel, options: ServeOptions) -> dict[str, Any]:
    """What ``/schema`` returns for an NLP model."""
    return {"request": SHAPE, "tasks": [model.describe(name) for name in model.tasks],
            "single_text_tasks": model.single_text_tasks, "max_batch": options.max_batch,
            "tokenization": "on the server; an input longer than its task's max_length is refused (413), never truncated"}


def create_text_app(directory: str | Path, options: ServeOptions) -> FastAPI:
    """The service of an NLP run's best model or its ONNX export (loaded once, here)."""
    options.check()
    directory = Path(directory)
    model = load_text_model(directory, options.threads)
    what = "NLP run" if model.backend == "pytorch" else f"{model.backend} export of an NLP run"
    app = FastAPI(title="mtlkit", version="1", description=f"Multi-task predictions of {what} {directory.resolve().name}")
    # An encoder pass takes milliseconds: every batch runs on the model thread, so the event loop keeps
    # reading, tokenizing and queueing the next requests meanwhile (the model releases the GIL).
    batcher: MicroBatcher[TextRequest] | None = (MicroBatcher(lambda requests: run_text_batch(model, requests), options.batch_rows,
                                                            options.batch_wait_ms / 1000, options.queue_size, inline_rows=0) if options.batching else None)
    app.state.model, app.state.batcher, app.state.options = model, batcher, options
    identity = service_identity(model.backend, directory, Path(model.encoder).name, list(model.tasks), model.run_dir, options)
    description = text_schema(model, options)

    def parse(body: bytes) -> TextRequest:
        return parse_text_request(body, model, options.max_batch)

    async def answer(request: Request) -> bytes:
        body = await read_body(request.stream(), request.headers.get("content-length"), options.max_body_bytes)
        parsed = parse(body) if len(body) <= INLINE_BYTES else await run_in_threadpool(parse, body)
        if batcher is not None:
            outcome = await batcher.submit(parsed)
        else:
            outcome = (await run_in_threadpool(run_text_batch, model, [parsed]))[0]
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome

    add_routes(app, answer, model.files_problem, identity, description, options, _REQUEST_BODY)
    return app


__all__ = ["create_text_app", "text_schema"]
