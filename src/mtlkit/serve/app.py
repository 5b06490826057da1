"""The FastAPI application: ``/predict``, ``/health``, ``/schema`` for one trained run or export.

The directory is a run (served in PyTorch) or an export of ``mtlkit export`` (``manifest.json``:
served with onnxruntime or ``torch.jit``), see :mod:`mtlkit.serve.predictor`; both answer the same
requests with the same responses and errors, and ``/health`` names the ``backend``.

``/predict`` takes ``{"rows": [{feature: value, ...}, ...]}`` and answers
``{"predictions": [{task: value, ..., "fused_score": value}, ...]}`` in row order, computed by
:func:`mtlkit.run.predict_table` (or :meth:`mtlkit.export.ExportedModel.predict_table`) on an
Arrow table built from the rows (:mod:`mtlkit.serve.rows`), so a served prediction equals
``mtlkit predict`` on the same rows (an export: within its verified tolerance).
Binary tasks give a probability (or odds with ``output: odds``), regression tasks a value in
label units, multiclass tasks ``{"class": c, "probabilities": [...]}``. A value that is not finite
(an overflowing input) is answered as ``null``.

Bad requests get 400 (malformed JSON), 413 (too many rows or bytes) or 422 (wrong shape, missing
feature, wrong type) with ``{"detail": "<what is wrong>"}``; never a 500.

Example (needs a trained run or an export directory)::

    app = create_app("runs/census")                     # or create_app("runs/census/export/onnx")
    uvicorn.run(app, host="127.0.0.1", port=8000)   # or: mtlkit serve runs/census
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.serve import DEFAULT_MAX_BATCH
from mtlkit.serve.predictor import Predictor, load_predictor
from mtlkit.serve.rows import RequestError, parse_rows, rows_to_table
from mtlkit.tasks import TaskKind

MAX_BODY_BYTES = 64 * 1024 * 1024

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


def _finite(values: np.ndarray) -> list[Any]:
    """JSON has no NaN/inf: non-finite values become null."""
    if np.isfinite(values).all():
        return values.tolist()
    return [v if math.isfinite(v) else None for v in values.tolist()]


def predictions(predictor: Predictor, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per row: every task's served value, and ``fused_score`` when configured."""
    table = rows_to_table(predictor.schema, rows)
    try:
        columns = predictor.predict_table(table, "request")
    except (MtlkitError, pa.ArrowException, ValueError, OverflowError) as error:  # values the schema cannot encode
        raise RequestError(422, f"the rows cannot be encoded: {error}") from None
    per_key: dict[str, list[Any]] = {}
    for task in predictor.tasks:
        if task.kind is TaskKind.MULTICLASS:
            classes = columns[task.name].tolist()
            probabilities = np.stack([columns[f"{task.name}_p{c}"] for c in range(task.n_classes or 0)], axis=1)
            per_key[task.name] = [{"class": c, "probabilities": p} for c, p in zip(classes, probabilities.tolist())]
        else:
            per_key[task.name] = _finite(columns[task.name])
    if "fused_score" in columns:
        per_key["fused_score"] = _finite(columns["fused_score"])
    keys = list(per_key)
    return [dict(zip(keys, values)) for values in zip(*per_key.values())]


def create_app(directory: str | Path, max_batch: int = DEFAULT_MAX_BATCH, max_body_bytes: int = MAX_BODY_BYTES,
               threads: Optional[int] = None) -> FastAPI:
    """The service for a run's best model or an export (loaded once, here); raises a MtlkitError for a bad directory.

    ``threads``: onnxruntime intra-op threads for an ONNX export (PyTorch's are the caller's to set).
    """
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {max_batch}")
    predictor = load_predictor(directory, threads)
    description = schema_description(predictor, max_batch)
    what = "run" if predictor.backend == "pytorch" else f"{predictor.backend} export"
    app = FastAPI(title="mtlkit", version="1", description=f"Multi-task predictions of {what} {Path(directory).name}")
    app.state.predictor = predictor
    status = {"status": "ok", "backend": predictor.backend, "run": predictor.run_dir,
              **({} if predictor.backend == "pytorch" else {"export": str(directory)}),
              "backbone": predictor.backbone, "tasks": [t.name for t in predictor.tasks]}

    def _predict(body: bytes) -> dict[str, Any]:
        return {"predictions": predictions(predictor, parse_rows(body, max_batch))}

    @app.post("/predict", openapi_extra=_REQUEST_BODY)
    async def predict(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return JSONResponse({"detail": f"request body of {length} bytes exceeds {max_body_bytes}"}, status_code=413)
        body = await request.body()
        try:
            # JSON parsing, encoding and the model are CPU work: off the event loop, so /health stays responsive.
            return JSONResponse(await run_in_threadpool(_predict, body))
        except RequestError as error:
            return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return status

    @app.get("/schema")
    async def schema() -> dict[str, Any]:
        return description

    return app


__all__ = ["create_app", "predictions", "schema_description"]
