"""The FastAPI application: ``/predict``, ``/health``, ``/schema`` for one trained run or export.

The directory is a run (served in PyTorch) or an export of ``mtlkit export`` (``manifest.json``:
served with onnxruntime or ``torch.jit``), see :mod:`mtlkit.serve.predictor`; both answer the same
requests with the same responses and errors, and ``/health`` names the ``backend``.

``/predict`` takes ``{"rows": [{feature: value, ...}, ...]}`` and answers
``{"predictions": [{task: value, ..., "fused_score": value}, ...]}`` in row order. A request is
read under a byte limit counted as it arrives (:mod:`mtlkit.serve.body`), validated and typed
into an Arrow table (:mod:`mtlkit.serve.rows`), then encoded with the run's schema and run by
the model — merged with concurrent requests into one forward pass unless batching is off
(:mod:`mtlkit.serve.batching`). A served prediction equals ``mtlkit predict`` on the same rows
(an export: within its verified tolerance), merged or not.
Binary tasks give a probability (or odds with ``output: odds``), regression tasks a value in
label units, multiclass tasks ``{"class": c, "probabilities": [...]}``. An output that is not
finite is answered as ``null``.

Bad requests get 400 (not one strict UTF-8 JSON text), 413 (too many rows or bytes) or 422
(wrong shape, missing feature, wrong type, a value out of range) with ``{"detail": "<what is
wrong, which row and feature>"}``; a full queue gets 503 with ``Retry-After``. Never a 500 for
anything a client sends.

``/health`` is 200 ``{"status": "ok", ...}`` while the files the model was loaded from are as
loaded, else 503 with the ``reason``; absolute paths only with ``show_paths``.

Example (needs a trained run or an export directory)::

    app = create_app("runs/census", ServeOptions())     # or create_app("runs/census/export/onnx", ...)
    uvicorn.run(app, host="127.0.0.1", port=8000)        # or: mtlkit serve runs/census
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from mtlkit.serve.batching import Busy, MicroBatcher, run_batch
from mtlkit.serve.body import BodyTooLarge, parse_rows, read_body
from mtlkit.serve.options import ServeOptions
from mtlkit.serve.predictor import Predictor, load_predictor
from mtlkit.serve.rows import RequestError, RowBlock, validate_rows

log = logging.getLogger("mtlkit.serve")
INLINE_BYTES = 32 * 1024  # bodies up to this size are parsed on the event loop: a thread hop costs more
ENVIRONMENT = "MTLKIT_SERVE"  # directory and options for uvicorn's worker processes (see app_from_environment)

_REQUEST_BODY = {  # for the OpenAPI page: the body is parsed by hand, for exact error messages
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["rows"],
        "properties": {"rows": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
    }}}}
}


def schema_description(predictor: Predictor, max_batch: int) -> dict[str, Any]:
    """What ``/schema`` returns: the features a row must hold, the tasks and the fused score."""
    schema = predictor.schema
    features: list[dict[str, Any]] = []
    for f in schema.categorical:
        features.append({"name": f.name, "type": "categorical", "accepts": "string, number, boolean or null",
                         "vocabulary_size": len(f.vocabulary), "hash_buckets": f.hash_buckets, "cardinality": f.cardinality})
    for n in schema.numeric:
        features.append({"name": n.name, "type": "numeric", "accepts": "number or null", "transform": n.transform})
    by_name = {f.name: f for f in schema.categorical}
    for s in schema.sequences:
        vocabulary = by_name[s.share_vocabulary_with] if s.share_vocabulary_with else s
        accepts = "list of items or null" + (f", or a {s.separator!r}-delimited string" if s.separator else "")
        features.append({"name": s.name, "type": "sequence", "accepts": accepts, "max_len": s.max_len,
                         "separator": s.separator, "shares_vocabulary_with": s.share_vocabulary_with,
                         "vocabulary_size": len(vocabulary.vocabulary), "hash_buckets": vocabulary.hash_buckets})
    return {
        "features": features,
        "ignored_features": [f.name for f in schema.bias],  # bias features: never used at serving
        "tasks": [task.describe() for task in predictor.tasks],
        "fused_score": predictor.fusion,
        "max_batch": max_batch,
    }


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # ensure_ascii: a lone surrogate can never make the answer itself unencodable.
    return Response(json.dumps(content, allow_nan=False).encode(), status, headers, media_type="application/json")


def error_response(error: RequestError) -> Response:
    headers = None
    if isinstance(error, Busy):
        headers = {"Retry-After": str(error.retry_after)}
    elif isinstance(error, BodyTooLarge):
        headers = {"Connection": "close"}  # the rest of the body is not read: the connection cannot carry another request
    return json_response({"detail": error.message}, error.status, headers)


def service_identity(backend: str, directory: Path, backbone: str, tasks: list[str], run_dir: str | None,
                     options: ServeOptions) -> dict[str, Any]:
    """What ``/health`` says besides the status (tabular and NLP services alike): no absolute path unless ``show_paths``."""
    identity: dict[str, Any] = {"backend": backend, "model": directory.resolve().name, "backbone": backbone, "tasks": tasks}
    if options.show_paths:
        identity["run"] = run_dir
        if backend != "pytorch":
            identity["export"] = str(directory.resolve())
    identity["batching"] = ({"max_rows": options.batch_rows, "max_wait_ms": options.batch_wait_ms, "queue_size": options.queue_size}
                            if options.batching else False)
    identity["limits"] = {"max_batch": options.max_batch, "max_body_bytes": options.max_body_bytes}
    return identity


def add_routes(app: FastAPI, answer: Callable[[Request], Awaitable[bytes]], files_problem: Callable[[bool], str | None],
               identity: dict[str, Any], description: dict[str, Any], options: ServeOptions,
               request_body: dict[str, Any]) -> None:
    """``/predict`` (``answer``'s bytes, or a JSON error: never a 500 for what a client sends), ``/health``
    (503 when ``files_problem`` names one) and ``/schema`` (``description``) — the contract every service keeps."""

    async def predict(request: Request) -> Response:
        try:
            return Response(await answer(request), media_type="application/json")
        except RequestError as error:
            if error.status >= 500:
                log.error("/predict: %s", error.message)
            return error_response(error)
        except ClientDisconnect:  # the client left mid-body: nobody reads an answer
            return Response(status_code=400)
        except Exception as error:  # a bug: answered (and logged) without dropping the connection
            log.exception("/predict failed")
            return json_response({"detail": f"internal error ({type(error).__name__})"}, 500)

    # Documented (OpenAPI) as a FastAPI route, but served by a plain Starlette route placed first:
    # FastAPI's per-request dependency solving cost about 200 µs, more than the rest of a 1-row request.
    app.post("/predict", openapi_extra=request_body)(predict)
    app.router.routes.insert(0, Route("/predict", predict, methods=["POST"]))

    @app.get("/health")
    async def health() -> Response:
        problem = files_problem(options.show_paths)
        if problem:
            return json_response({"status": "unavailable", "reason": problem, **identity}, 503)
        return json_response({"status": "ok", **identity})

    @app.get("/schema")
    async def schema() -> dict[str, Any]:
        return description


def create_app(directory: str | Path, options: ServeOptions) -> FastAPI:
    """The service for a run's best model or an export (loaded once, here); a MtlkitError for a bad directory or option.

    An NLP run or its export is served by :func:`mtlkit.serve.text_app.create_text_app` (texts in).
    """
    options.check()
    directory = Path(directory)
    from mtlkit.serve.text import is_text_directory

    if is_text_directory(directory):
        from mtlkit.serve.text_app import create_text_app

        return create_text_app(directory, options)
    predictor = load_predictor(directory, options.threads)
    description = schema_description(predictor, options.max_batch)
    what = "run" if predictor.backend == "pytorch" else f"{predictor.backend} export"
    app = FastAPI(title="mtlkit", version="1", description=f"Multi-task predictions of {what} {directory.resolve().name}")
    batcher: MicroBatcher[RowBlock] | None = (MicroBatcher(lambda blocks: run_batch(predictor, blocks), options.batch_rows, options.batch_wait_ms / 1000,
                            options.queue_size) if options.batching else None)
    app.state.predictor, app.state.batcher, app.state.options = predictor, batcher, options
    identity = service_identity(predictor.backend, directory, predictor.backbone, [t.name for t in predictor.tasks],
                                predictor.run_dir, options)

    def block_of(body: bytes) -> RowBlock:
        return validate_rows(predictor.schema, parse_rows(body, options.max_batch))

    async def answer(request: Request) -> bytes:
        body = await read_body(request.stream(), request.headers.get("content-length"), options.max_body_bytes)
        # Parsing is CPU work: a large body goes to a thread so /health and small requests stay responsive.
        block = block_of(body) if len(body) <= INLINE_BYTES else await run_in_threadpool(block_of, body)
        outcome = await batcher.submit(block) if batcher is not None else (await run_in_threadpool(run_batch, predictor, [block]))[0]
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome

    add_routes(app, answer, predictor.files_problem, identity, description, options, _REQUEST_BODY)
    return app


def app_from_environment() -> FastAPI:
    """The app of one uvicorn worker process (``mtlkit serve --workers N``): directory and options from the environment."""
    from mtlkit.serve import configure_threads, settle

    settings = json.loads(os.environ[ENVIRONMENT])
    options = ServeOptions.from_json(settings["options"])
    configure_threads(options.threads)
    app = create_app(settings["directory"], options)
    settle()
    return app


__all__ = ["ENVIRONMENT", "app_from_environment", "create_app", "schema_description"]
