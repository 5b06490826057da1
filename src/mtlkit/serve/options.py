"""How a service runs: request limits, micro-batching, threads, what ``/health`` shows.

One frozen :class:`ServeOptions` is built from ``mtlkit serve``'s options or from
:func:`mtlkit.serve.create_app`'s keywords and checked once (:meth:`ServeOptions.check`), so a bad
value is a one-line ConfigError naming the option before any model is loaded or port opened.
It travels to uvicorn's worker processes as JSON (:meth:`to_json`, :meth:`from_json`).

Example:
    >>> ServeOptions(batch_wait_ms=-1).check()
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: --batch-wait-ms must be between 0 and 1000, got -1
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from mtlkit.errors import ConfigError

DEFAULT_MAX_BATCH = 4096
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """Everything about a service but the model directory (defaults are ``mtlkit serve``'s)."""

    max_batch: int = DEFAULT_MAX_BATCH  # most rows in one request (more: 413)
    max_body_bytes: int = MAX_BODY_BYTES  # most bytes in one request body, counted as they arrive (more: 413)
    batching: bool = True  # merge concurrent requests into one forward pass
    batch_rows: int = 512  # most rows in one merged forward pass (a larger request runs alone)
    batch_wait_ms: float = 1.0  # how long the first request of a batch waits for others to join
    queue_size: int = 256  # requests waiting for the model; one more gets 503 with Retry-After
    # Inference threads per process, PyTorch's and onnxruntime's (None: the library's, one per core).
    # One: a merged batch of small requests is too small to split, and extra threads spin on the cores
    # the event loop needs (1,200 against 230-480 requests/s on 2 cores); --workers uses more cores.
    threads: int | None = 1
    show_paths: bool = False  # /health shows the absolute paths of the run and export

    def check(self) -> ServeOptions:
        """``self`` if every value is allowed; ConfigError naming the ``mtlkit serve`` option otherwise."""
        _at_least("--max-batch", self.max_batch, 1)
        _at_least("--max-body-bytes", self.max_body_bytes, 1)
        _at_least("--batch-rows", self.batch_rows, 1)
        _at_least("--queue-size", self.queue_size, 1)
        if self.threads is not None:
            _at_least("--threads", self.threads, 1)
        wait = self.batch_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 1000:
            raise ConfigError(f"--batch-wait-ms must be between 0 and 1000, got {wait!r}")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known}).check()


def _at_least(option: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{option} must be an integer of at least {least}, got {value!r}")


__all__ = ["DEFAULT_MAX_BATCH", "MAX_BODY_BYTES", "ServeOptions"]
