"""Dynamic micro-batching: concurrent requests share one encoding and one forward pass.

A 1-row request costs about as much as a 50-row one (Arrow, schema encoding and the model's
per-call overhead dominate: see ``benchmarks/serve.py --load``), so under concurrent load the
service merges requests. :class:`MicroBatcher` holds a bounded queue and one model thread: the
thread takes the oldest request, lets others join until ``max_rows`` rows or until the first
has waited ``max_wait`` seconds, and runs them as one batch. A full queue answers 503 (with
``Retry-After``) at once rather than letting latency grow without bound.

:func:`run_batch` is the batch itself, used unmerged too (one request) so both paths answer
alike. Each request was already parsed and validated into its own Arrow table; here requests
whose tables have the same column types are concatenated and encoded once (rows encode
independently, so that equals encoding each alone), each request's encoded numeric values are
checked (a value the feature's scaling overflows is that request's 422), and the rest go
through one forward pass whose outputs are split back by row offsets. A request that fails
never fails its batch-mates: a failed merged encoding or forward pass is retried per request.

Example:
    >>> import pyarrow as pa
    >>> calls = []
    >>> stub = type("P", (), {"encode": lambda self, t, s: {"x": t.column("x").to_numpy()},
    ...                       "forward": lambda self, inputs: calls.append(len(inputs["x"])) or {"fused_score": inputs["x"] * 2},
    ...                       "numeric_columns": [], "tasks": []})()
    >>> [json.loads(out) for out in run_batch(stub, [pa.table({"x": [1.0]}), pa.table({"x": [2.0, 3.0]})])]
    [{'predictions': [{'fused_score': 2.0}]}, {'predictions': [{'fused_score': 4.0}, {'fused_score': 6.0}]}]
    >>> calls   # one forward pass of 3 rows
    [3]
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import pyarrow as pa

from mtlkit.errors import MtlkitError
from mtlkit.serve.predictor import NUMERIC_INPUT, Inputs
from mtlkit.serve.rows import RequestError
from mtlkit.tasks import TaskKind

log = logging.getLogger("mtlkit.serve")
Outcome = Union[bytes, RequestError]  # the 200 body (JSON), or the request's error
ENCODE_ERRORS = (MtlkitError, pa.ArrowException, ValueError, OverflowError, UnicodeError)


class Busy(RequestError):
    """The queue is full: 503, retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(503, message)
        self.retry_after = retry_after


# -- one batch ---------------------------------------------------------------------------------------


@dataclass
class _Encoded:
    """Encoded inputs of consecutive requests: request ``members[k]`` holds rows ``bounds[k]:bounds[k+1]``."""

    inputs: Inputs
    members: list[int]
    bounds: list[int]


def _encode(predictor: Any, table: pa.Table) -> Inputs:
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing value is reported by _drop_overflowing
        return predictor.encode(table, "request")


def _encode_group(predictor: Any, tables: list[pa.Table], members: list[int], results: list[Optional[Outcome]]) -> list[_Encoded]:
    """Encode requests of identical column types in one call; on failure, each alone (its error is its own)."""
    if len(members) == 1:
        return _encode_alone(predictor, tables, members, results)
    group = [tables[i] for i in members]
    bounds = [int(b) for b in np.cumsum([0] + [t.num_rows for t in group])]
    try:
        return [_Encoded(_encode(predictor, pa.concat_tables(group)), members, bounds)]
    except Exception:
        return _encode_alone(predictor, tables, members, results)


def _encode_alone(predictor: Any, tables: list[pa.Table], members: list[int], results: list[Optional[Outcome]]) -> list[_Encoded]:
    out = []
    for i in members:
        try:
            out.append(_Encoded(_encode(predictor, tables[i]), [i], [0, tables[i].num_rows]))
        except ENCODE_ERRORS as error:  # values the schema cannot encode
            results[i] = RequestError(422, f"the rows cannot be encoded: {error}")
        except Exception as error:
            log.exception("encoding a request failed")
            results[i] = RequestError(500, f"internal error while encoding the rows ({type(error).__name__})")
    return out


def _drop_overflowing(predictor: Any, encoded: _Encoded, results: list[Optional[Outcome]]) -> _Encoded:
    """Requests whose encoded numeric values are not finite get a 422 naming row and feature, and leave the batch."""
    block = encoded.inputs.get(NUMERIC_INPUT)
    if block is None or np.isfinite(block).all():
        return encoded
    keep_rows, members, bounds = [], [], [0]
    for k, i in enumerate(encoded.members):
        start, stop = encoded.bounds[k], encoded.bounds[k + 1]
        bad = np.argwhere(~np.isfinite(block[start:stop]))
        if len(bad):
            row, column = (int(v) for v in bad[0])
            feature = predictor.numeric_columns[column]
            results[i] = RequestError(422, f"rows[{row}]: feature {feature!r}: the value is out of range "
                                           "(it overflows after the feature's transform and scaling)")
            continue
        keep_rows.append(np.arange(start, stop))
        members.append(i)
        bounds.append(bounds[-1] + stop - start)
    if not members:
        return _Encoded({}, [], [0])
    index = np.concatenate(keep_rows)
    return _Encoded({key: value[index] for key, value in encoded.inputs.items()}, members, bounds)


def _merge(parts: list[_Encoded]) -> _Encoded:
    if len(parts) == 1:
        return parts[0]
    members, bounds = [], [0]
    for part in parts:
        members += part.members
        bounds += [bounds[-1] + b for b in part.bounds[1:]]
    inputs = {key: np.concatenate([part.inputs[key] for part in parts]) for key in parts[0].inputs}
    return _Encoded(inputs, members, bounds)


def _finite(values: np.ndarray) -> list[Any]:
    """JSON has no NaN/inf: non-finite values become null."""
    if np.isfinite(values).all():
        return values.tolist()
    return [v if math.isfinite(v) else None for v in values.tolist()]


def render(predictor: Any, columns: dict[str, np.ndarray], start: int, stop: int) -> bytes:
    """The JSON body of rows ``start:stop``: every task's served value, ``fused_score`` when configured."""
    per_key: dict[str, list[Any]] = {}
    for task in predictor.tasks:
        if task.kind is TaskKind.MULTICLASS:
            probabilities = np.stack([columns[f"{task.name}_p{c}"][start:stop] for c in range(task.n_classes or 0)], axis=1)
            classes = columns[task.name][start:stop].tolist()
            finite = np.isfinite(probabilities).all(axis=1).tolist()
            per_key[task.name] = [{"class": c if ok else None, "probabilities": p if ok else _finite(np.array(p))}
                                  for c, p, ok in zip(classes, probabilities.tolist(), finite)]
        else:
            per_key[task.name] = _finite(columns[task.name][start:stop])
    if "fused_score" in columns:
        per_key["fused_score"] = _finite(columns["fused_score"][start:stop])
    keys = list(per_key)
    rows = [dict(zip(keys, values)) for values in zip(*per_key.values())]
    return json.dumps({"predictions": rows}, allow_nan=False).encode()


def _forward(predictor: Any, encoded: _Encoded, results: list[Optional[Outcome]]) -> None:
    try:
        columns = predictor.forward(encoded.inputs)
    except Exception:
        if len(encoded.members) == 1:
            log.exception("the model failed on a request")
            results[encoded.members[0]] = RequestError(500, "internal error while running the model")
            return
        log.exception("the model failed on a merged batch: running its requests one by one")
        for k, i in enumerate(encoded.members):
            start, stop = encoded.bounds[k], encoded.bounds[k + 1]
            _forward(predictor, _Encoded({key: v[start:stop] for key, v in encoded.inputs.items()}, [i], [0, stop - start]), results)
        return
    for k, i in enumerate(encoded.members):
        results[i] = render(predictor, columns, encoded.bounds[k], encoded.bounds[k + 1])


def run_batch(predictor: Any, tables: list[pa.Table]) -> list[Outcome]:
    """Each request's JSON answer or error, in order: one encoding per column-type group, one forward pass."""
    results: list[Optional[Outcome]] = [None] * len(tables)
    groups: dict[pa.Schema, list[int]] = {}
    for i, table in enumerate(tables):
        groups.setdefault(table.schema, []).append(i)
    parts = []
    for members in groups.values():
        for encoded in _encode_group(predictor, tables, members, results):
            encoded = _drop_overflowing(predictor, encoded, results)
            if encoded.members:
                parts.append(encoded)
    if parts:
        _forward(predictor, _merge(parts), results)
    return [r if r is not None else RequestError(500, "internal error: no answer") for r in results]


# -- the queue and the model thread --------------------------------------------------------------------


@dataclass
class _Job:
    table: pa.Table
    arrived: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


def _resolve(future: asyncio.Future, outcome: Outcome) -> None:
    if not future.done():  # the client may have gone (its handler was cancelled)
        future.set_result(outcome)


class MicroBatcher:
    """A bounded queue of requests and one thread that runs them in merged batches through ``process``."""

    def __init__(self, process: Callable[[list[pa.Table]], list[Outcome]], max_rows: int, max_wait_s: float, queue_size: int) -> None:
        self.process, self.max_rows, self.max_wait_s = process, max_rows, max_wait_s
        self.queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self.batches = 0  # forward passes run (statistics for /health and tests)
        self.requests = 0
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()

    async def submit(self, table: pa.Table) -> Outcome:
        """The request's outcome once its batch ran; Busy (503) at once when the queue is full."""
        loop = asyncio.get_running_loop()
        job = _Job(table, time.monotonic(), loop, loop.create_future())
        self._ensure_thread()
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise Busy(f"busy: {self.queue.maxsize} requests are already waiting for the model; retry shortly") from None
        return await job.future

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="mtlkit-batcher", daemon=True)
                    self._thread.start()

    def _next_batch(self, first: _Job) -> tuple[list[_Job], Optional[_Job]]:
        """``first`` and the requests that join it; the one that did not fit (it starts the next batch)."""
        batch, rows = [first], first.table.num_rows
        deadline = first.arrived + self.max_wait_s  # a request that queued during the last batch has waited already
        while rows < self.max_rows:
            remaining = deadline - time.monotonic()
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if rows + job.table.num_rows > self.max_rows:
                return batch, job
            batch.append(job)
            rows += job.table.num_rows
        return batch, None

    def _loop(self) -> None:
        carried: Optional[_Job] = None
        while True:
            first = carried or self.queue.get()
            batch, carried = self._next_batch(first)
            live = [job for job in batch if not job.future.done()]
            if not live:
                continue
            try:
                outcomes = self.process([job.table for job in live])
            except Exception as error:  # run_batch answers every request; this is the last guard of the thread
                log.exception("a batch failed")
                outcomes = [RequestError(500, f"internal error ({type(error).__name__})")] * len(live)
            self.batches += 1
            self.requests += len(live)
            for job, outcome in zip(live, outcomes):
                try:
                    job.loop.call_soon_threadsafe(_resolve, job.future, outcome)
                except RuntimeError:  # the event loop is closed: nobody waits for this answer
                    pass


__all__ = ["Busy", "MicroBatcher", "Outcome", "render", "run_batch"]
