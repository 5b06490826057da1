"""HTTP serving of a trained run or of its export (extra ``mtlkit[serve]``: FastAPI and uvicorn).

``mtlkit serve DIR`` starts the service; DIR is a run directory (the PyTorch model) or an export
directory of ``mtlkit export`` (has ``manifest.json``: onnxruntime for ONNX, ``torch.jit`` for
TorchScript), told apart automatically (:mod:`mtlkit.serve.predictor`). :func:`create_app`
builds the same application for tests or for another ASGI server. Endpoints (see :mod:`mtlkit.serve.app`):

- ``POST /predict`` ``{"rows": [{feature: value, ...}, ...]}`` → ``{"predictions": [{task: value, ..., "fused_score": s}, ...]}``
- ``GET /health`` → ``{"status": "ok", "backend": "pytorch" | "onnx" | "torchscript", ...}``
- ``GET /schema`` → the features a row needs (names, types, vocabulary sizes), the tasks, the fused score

Importing this package does not import FastAPI; the functions below do, and say which extra is
missing when it is.

Example (needs a trained run directory)::

    from mtlkit.serve import create_app
    app = create_app("runs/shortvideo", max_batch=1024)
    app = create_app("runs/shortvideo/export/onnx", max_batch=1024, threads=1)   # its ONNX export
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

from mtlkit.errors import ConfigError

DEFAULT_MAX_BATCH = 4096


def _require_serve_extra() -> None:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"serving needs {', '.join(missing)}: pip install 'mtlkit[serve]'")


def create_app(directory: str | Path, max_batch: int = DEFAULT_MAX_BATCH, threads: Optional[int] = None) -> Any:
    """The FastAPI application serving the best model of a run directory, or an export directory.

    ``threads``: onnxruntime intra-op threads when serving an ONNX export (default: onnxruntime's).
    """
    _require_serve_extra()
    from mtlkit.serve.app import create_app as _create_app

    return _create_app(directory, max_batch, threads=threads)


def serve(
    directory: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = DEFAULT_MAX_BATCH,
    threads: Optional[int] = None,
    log_level: str = "info",
) -> None:
    """Load the run or export, then serve it with uvicorn until interrupted (checked before the port opens).

    ``threads`` is the inference thread count: PyTorch's (run, TorchScript) and onnxruntime's (ONNX).
    """
    _require_serve_extra()
    import torch
    import uvicorn

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    app = create_app(directory, max_batch, threads)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["create_app", "serve"]
