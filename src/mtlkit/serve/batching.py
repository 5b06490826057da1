"""Dynamic micro-batching: concurrent requests share one encoding and one forward pass.

A 1-row request costs about as much as a 50-row one (Arrow, schema encoding and the model's
per-call overhead dominate: see ``benchmarks/serve.py --load``), so under concurrent load the
service merges requests. :class:`MicroBatcher` holds a bounded queue and one batching task on
the event loop: it takes the oldest request, lets others join until ``max_rows`` rows or until
the first has waited ``max_wait`` seconds, and runs them as one batch. A full queue answers 503
(with ``Retry-After``) at once rather than letting latency grow without bound.

:func:`run_batch` is the batch itself, used unmerged too (one request) so both paths answer
alike. Each request was already parsed and validated into its own typed columns
(:class:`~mtlkit.serve.rows.RowBlock`); here requests whose columns have the same types become
one Arrow table, encoded once (rows encode independently, so that equals encoding each
alone), each request's encoded numeric values are
checked (a value the feature's scaling overflows is that request's 422), and the rest go
through one forward pass whose outputs are split back by row offsets. A request that fails
never fails its batch-mates: a failed merged encoding or forward pass is retried per request.

Example:
    >>> from mtlkit.serve.rows import RowBlock
    >>> calls = []
    >>> stub = type("P", (), {"encode": lambda self, t, s: {"x": t.column("x").to_numpy()},
    ...                       "forward": lambda self, inputs: calls.append(len(inputs["x"])) or {"fused_score": inputs["x"] * 2},
    ...                       "numeric_columns": [], "tasks": []})()
    >>> blocks = [RowBlock(1, {"x": (pa.float64(), [1.0])}), RowBlock(2, {"x": (pa.float64(), [2.0, 3.0])})]
    >>> [json.loads(out) for out in run_batch(stub, blocks)]
    [{'predictions': [{'fused_score': 2.0}]}, {'predictions': [{'fused_score': 4.0}, {'fused_score': 6.0}]}]
    >>> calls   # one forward pass of 3 rows
    [3]
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from mtlkit.errors import MtlkitError
from mtlkit.serve.predictor import NUMERIC_INPUT, Inputs, ServedTask
from mtlkit.serve.rows import RequestError, RowBlock, to_table
from mtlkit.tasks import TaskKind

log = logging.getLogger("mtlkit.serve")
Outcome = bytes | RequestError  # the 200 body (JSON), or the request's error
ENCODE_ERRORS = (MtlkitError, pa.ArrowException, ValueError, OverflowError, UnicodeError)
INLINE_ROWS = 1024  # batches up to this many rows run on the event loop (see MicroBatcher)


class Model(Protocol):
    """What a batch needs of the served model; :class:`mtlkit.serve.predictor.Predictor` is one."""

    @property
    def tasks(self) -> Sequence[ServedTask]: ...

    @property
    def numeric_columns(self) -> list[str]: ...

    def encode(self, table: pa.Table, source: str) -> Inputs: ...

    def forward(self, inputs: Inputs) -> dict[str, np.ndarray]: ...


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


def _encode(predictor: Model, blocks: list[RowBlock]) -> Inputs:
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing value is reported by _drop_overflowing
        return predictor.encode(to_table(blocks), "request")


def _encode_group(predictor: Model, blocks: list[RowBlock], members: list[int], results: list[Outcome | None]) -> list[_Encoded]:
    """Encode requests of identical column types in one call; on failure, each alone (its error is its own)."""
    if len(members) == 1:
        return _encode_alone(predictor, blocks, members, results)
    group = [blocks[i] for i in members]
    bounds = [int(b) for b in np.cumsum([0] + [b.num_rows for b in group])]
    try:
        return [_Encoded(_encode(predictor, group), members, bounds)]
    except Exception:
        return _encode_alone(predictor, blocks, members, results)


def _encode_alone(predictor: Model, blocks: list[RowBlock], members: list[int], results: list[Outcome | None]) -> list[_Encoded]:
    out = []
    for i in members:
        try:
            out.append(_Encoded(_encode(predictor, [blocks[i]]), [i], [0, blocks[i].num_rows]))
        except ENCODE_ERRORS as error:  # values the schema cannot encode
            results[i] = RequestError(422, f"the rows cannot be encoded: {error}")
        except Exception as error:
            log.exception("encoding a request failed")
            results[i] = RequestError(500, f"internal error while encoding the rows ({type(error).__name__})")
    return out


def _drop_overflowing(predictor: Model, encoded: _Encoded, results: list[Outcome | None]) -> _Encoded:
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


def render(predictor: Model, columns: dict[str, np.ndarray], bounds: list[int]) -> list[bytes]:
    """The JSON body of each request, rows ``bounds[k]:bounds[k + 1]``: every task's served value, and
    ``fused_score`` when configured. Columns become Python lists once per batch, not once per request."""
    per_key: dict[str, list[Any]] = {}
    for task in predictor.tasks:
        if task.kind is TaskKind.MULTICLASS:
            probabilities = np.stack([columns[f"{task.name}_p{c}"] for c in range(task.n_classes or 0)], axis=1)
            finite = np.isfinite(probabilities).all(axis=1).tolist()
            per_key[task.name] = [{"class": c if ok else None, "probabilities": p if ok else _finite(np.array(p))}
                                  for c, p, ok in zip(columns[task.name].tolist(), probabilities.tolist(), finite)]
        else:
            per_key[task.name] = _finite(columns[task.name])
    if "fused_score" in columns:
        per_key["fused_score"] = _finite(columns["fused_score"])
    keys = list(per_key)
    rows = [dict(zip(keys, values)) for values in zip(*per_key.values())]
    return [json.dumps({"predictions": rows[start:stop]}, allow_nan=False).encode() for start, stop in zip(bounds, bounds[1:])]


def _forward(predictor: Model, encoded: _Encoded, results: list[Outcome | None]) -> None:
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
    for i, body in zip(encoded.members, render(predictor, columns, encoded.bounds)):
        results[i] = body


def run_batch(predictor: Model, blocks: list[RowBlock]) -> list[Outcome]:
    """Each request's JSON answer or error, in order: one encoding per column-type group, one forward pass."""
    results: list[Outcome | None] = [None] * len(blocks)
    groups: dict[tuple, list[int]] = {}
    for i, block in enumerate(blocks):
        groups.setdefault(block.signature, []).append(i)
    parts = []
    for members in groups.values():
        for encoded in _encode_group(predictor, blocks, members, results):
            encoded = _drop_overflowing(predictor, encoded, results)
            if encoded.members:
                parts.append(encoded)
    if parts:
        _forward(predictor, _merge(parts), results)
    return [r if r is not None else RequestError(500, "internal error: no answer") for r in results]


# -- the queue and the batching task ----------------------------------------------------------------


class Rows(Protocol):
    """What the batcher reads of a request: its row count (a :class:`RowBlock`, an NLP ``TextRequest``)."""

    @property
    def num_rows(self) -> int: ...


BlockT = TypeVar("BlockT", bound=Rows)


@dataclass
class _Job(Generic[BlockT]):
    block: BlockT
    arrived: float
    future: asyncio.Future = field(repr=False)


class MicroBatcher(Generic[BlockT]):
    """A bounded queue of requests and one task of the event loop that runs them in merged batches.

    A batch of up to ``inline_rows`` rows runs on the event loop itself: a few milliseconds of
    encoding and model. In a thread it would be slower, not faster — the model thread and the
    event loop (HTTP parsing, validation) are both Python and take turns on the GIL, and each
    hand-over costs up to the interpreter's 5 ms switch interval, many times per batch. Larger
    batches (from large requests) go to one model thread so ``/health`` stays responsive.
    """

    def __init__(self, process: Callable[[list[BlockT]], list[Outcome]], max_rows: int, max_wait_s: float,
                 queue_size: int, inline_rows: int = INLINE_ROWS) -> None:
        self.process, self.max_rows, self.max_wait_s, self.queue_size = process, max_rows, max_wait_s, queue_size
        self.inline_rows = inline_rows
        self.batches = 0  # batches run, and requests in them (statistics for tests and benchmarks)
        self.requests = 0
        self._queue: deque[_Job[BlockT]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def submit(self, block: BlockT) -> Outcome:
        """The request's outcome once its batch ran; Busy (503) at once when the queue is full."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first request, or a new event loop (a test client's)
            self._start(loop)
        if len(self._queue) >= self.queue_size:
            raise Busy(f"busy: {self.queue_size} requests are already waiting for the model; retry shortly")
        job = _Job(block, time.monotonic(), loop.create_future())
        self._queue.append(job)
        assert self._wakeup is not None
        self._wakeup.set()
        return await job.future

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._wakeup, self._queue = loop, asyncio.Event(), deque()
        self._task = loop.create_task(self._run_forever(), name="mtlkit-batcher")

    async def _next_batch(self) -> list[_Job[BlockT]]:
        """The oldest request and those that join it: until ``max_rows`` rows, or the oldest has waited ``max_wait_s``."""
        assert self._wakeup is not None
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = [self._queue.popleft()]
        rows = batch[0].block.num_rows
        deadline = batch[0].arrived + self.max_wait_s  # a request that queued during the last batch has waited already
        while rows < self.max_rows:
            if self._queue:
                if rows + self._queue[0].block.num_rows > self.max_rows:
                    break  # it starts the next batch
                job = self._queue.popleft()
                batch.append(job)
                rows += job.block.num_rows
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    async def _run_forever(self) -> None:
        while True:
            batch = [job for job in await self._next_batch() if not job.future.done()]  # done: the client left
            if not batch:
                continue
            blocks = [job.block for job in batch]
            try:
                if sum(b.num_rows for b in blocks) <= self.inline_rows:
                    outcomes = self.process(blocks)
                else:
                    if self._thread is None:
                        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mtlkit-model")
                    outcomes = await asyncio.get_running_loop().run_in_executor(self._thread, self.process, blocks)
            except Exception as error:  # run_batch answers every request; this is the last guard of the task
                log.exception("a batch failed")
                outcomes = [RequestError(500, f"internal error ({type(error).__name__})")] * len(batch)
            self.batches += 1
            self.requests += len(batch)
            for job, outcome in zip(batch, outcomes):
                if not job.future.done():
                    job.future.set_result(outcome)
            await asyncio.sleep(0)  # let the handlers of the answered requests run before the next batch


__all__ = ["Busy", "MicroBatcher", "Outcome", "render", "run_batch"]
