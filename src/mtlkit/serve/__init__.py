"""HTTP serving of a trained run or of its export (extra ``mtlkit[serve]``: FastAPI and uvicorn).

``mtlkit serve DIR`` starts the service; DIR is a run directory (the PyTorch model) or an export
directory of ``mtlkit export`` (has ``manifest.json``: onnxruntime for ONNX, ``torch.jit`` for
TorchScript), told apart automatically (:mod:`mtlkit.serve.predictor`). :func:`create_app`
builds the same application for tests or for another ASGI server. Endpoints (see :mod:`mtlkit.serve.app`):

- ``POST /predict`` ``{"rows": [{feature: value, ...}, ...]}`` → ``{"predictions": [{task: value, ..., "fused_score": s}, ...]}``
- ``GET /health`` → ``{"status": "ok", "backend": "pytorch" | "onnx" | "torchscript", ...}``, or 503 with the reason
- ``GET /schema`` → the features a row needs (names, types, vocabulary sizes), the tasks, the fused score

An NLP run (or its ONNX export) is served with texts in instead of rows (:mod:`mtlkit.serve.text`,
:mod:`mtlkit.serve.text_app`): ``POST /predict`` ``{"task": name, "inputs": [text, ...]}`` →
``{"predictions": [record, ...]}``, the records of ``mtlkit predict``.

Concurrent requests are merged into shared forward passes (:mod:`mtlkit.serve.batching`); the
options of :class:`~mtlkit.serve.options.ServeOptions` set the limits, the batching and the
threads. Importing this package does not import FastAPI; the functions below do, and say which
extra is missing when it is.

Example (needs a trained run directory)::

    from mtlkit.serve import create_app
    app = create_app("runs/shortvideo", max_batch=1024)
    app = create_app("runs/shortvideo/export/onnx", threads=1, batch_wait_ms=1)   # its ONNX export
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.serve.options import DEFAULT_MAX_BATCH, MAX_BODY_BYTES, ServeOptions

WORKER_STARTUP_S = 120  # how long a worker process may take to load the model


def _require_serve_extra() -> None:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"serving needs {', '.join(missing)}: pip install 'mtlkit[serve]'")


def configure_threads(threads: int | None) -> None:
    """PyTorch's intra-op threads for this process (onnxruntime's are set per session)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def create_app(directory: str | Path, max_batch: int = DEFAULT_MAX_BATCH, threads: int | None = 1, **options: Any) -> Any:
    """The FastAPI application serving the best model of a run directory, or an export directory.

    ``options``: the other fields of :class:`~mtlkit.serve.options.ServeOptions` (``batching``,
    ``batch_rows``, ``batch_wait_ms``, ``queue_size``, ``max_body_bytes``, ``show_paths``).
    ``threads``: onnxruntime's intra-op threads for an ONNX export (None: its default); PyTorch's are
    process-wide: :func:`serve` sets them.
    """
    _require_serve_extra()
    from mtlkit.serve.app import create_app as _create_app

    return _create_app(directory, ServeOptions(max_batch=max_batch, threads=threads, **options))


def settle() -> None:
    """Once the model is loaded: move every object alive now out of the garbage collector's sight.

    The model, torch and pyarrow leave millions of long-lived objects; without this every full
    collection walks them all, tens of milliseconds that land on some request's latency (the p99
    of ``benchmarks/serve.py --load`` fell from about 170 to 45 ms).
    """
    import gc

    gc.collect()
    gc.freeze()


def serve(
    directory: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    access_log: bool = False,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Load the run or export, then serve it with uvicorn until interrupted (checked before the port opens).

    ``options``: the fields of :class:`~mtlkit.serve.options.ServeOptions`; ``threads`` is the
    inference thread count of each process, PyTorch's (run, TorchScript) and onnxruntime's (ONNX).
    ``workers`` > 1 runs that many processes (uvicorn's), each with its own copy of the model and
    its own batching, sharing the port. ``access_log``: a line per request (about 27 µs each).
    """
    _require_serve_extra()
    import uvicorn

    settings = ServeOptions(**options).check()
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    configure_threads(settings.threads)
    app = create_app(directory, **asdict(settings))  # a bad directory fails here, before any port opens
    run: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "access_log": access_log}
    if workers == 1:
        settle()
        uvicorn.run(app, **run)
        return
    del app  # each worker loads its own copy
    from mtlkit.serve.app import ENVIRONMENT

    os.environ[ENVIRONMENT] = json.dumps({"directory": str(Path(directory).resolve()), "options": settings.to_json()})
    # A worker loads torch and the model before it answers uvicorn's health pings: on a busy machine
    # that takes longer than uvicorn's 5 s, and the worker would be killed and restarted forever.
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:  # uvicorn versions with worker health checks
        run["timeout_worker_healthcheck"] = WORKER_STARTUP_S
    uvicorn.run("mtlkit.serve.app:app_from_environment", factory=True, workers=workers, **run)


__all__ = ["DEFAULT_MAX_BATCH", "MAX_BODY_BYTES", "ServeOptions", "configure_threads", "create_app", "serve", "settle"]
