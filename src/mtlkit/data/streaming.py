"""Streaming Parquet training data: batches from files bigger than memory.

:class:`ParquetBatches` is a batch source with the interface of :class:`~mtlkit.data.batch.TableBatches`
(``len()`` steps per epoch, ``epoch(epoch, start_step)`` yielding ``[Batch]``) that reads Parquet row
groups as it goes instead of holding the table:

1. **Shards.** The row groups of the files (file order, then group order) are dealt round-robin:
   rank ``r`` of ``W`` owns groups ``r, r+W, r+2W, …`` (``rank``/``world_size`` default to
   ``torch.distributed``'s when it is initialised). DDP needs the same number of steps on every
   rank, so each rank runs the smallest shard's ``ceil(rows / batch_size)`` steps: a larger shard
   leaves its surplus out of the epoch (the rows drawn last from its shuffle buffer, so different
   rows each epoch). Shards of equal rows lose nothing; otherwise the surplus is about one row
   group (when the group count is not a multiple of ``W``). Resuming mid-epoch needs the same ``W``;
   at an epoch boundary any ``W`` will do.
2. **Order.** Each epoch the rank reads its row groups in a permutation seeded by
   ``(seed, epoch, rank)``, only the columns the schema and tasks need, and encodes each whole
   group with the fitted schema (vectorised Arrow/numpy → tensors) into a **shuffle buffer** of
   preallocated column tensors, until the buffer holds ``buffer_rows`` rows. A batch is
   ``batch_size`` rows drawn from the buffer without replacement by a generator seeded by
   ``(seed, epoch, rank)``; rows from the buffer's end fill the holes. So the buffer never holds
   more than ``max(buffer_rows, batch_size)`` + one row group rows (``peak_buffer_rows`` counts
   them). Memory is that buffer, one row group being decoded and encoded, and ``prefetch``
   batches, however large the files are.
3. **Exact resumption.** Which buffer slots a batch takes depends only on how many rows the buffer
   holds, never on their values. ``epoch(e, start_step=k)`` therefore replays the index plan of
   steps ``0 … k−1`` on row numbers alone — random draws and slot moves, no reading, no decoding —
   then reads only the row groups that still have rows in the buffer and puts those rows back in
   their slots (older groups' rows drain geometrically, so these are the last few dozen loaded at
   most). The batches from step ``k`` on are tensor-equal to the uninterrupted epoch's, so the
   trainer's checkpoint (epoch, step) is all the position there is to save.
4. **Prefetch.** One background thread prepares up to ``prefetch`` steps ahead (Parquet decoding
   and the numpy/Arrow kernels of encoding release the GIL), so reading overlaps the training step.
   One producer keeps the order deterministic.

With ``shuffle=False`` the rank's rows come in file order, cut into consecutive batches.

:func:`fit_schema_streaming` fits vocabularies and scalers one row group at a time: by exact
streaming counts (equal to :meth:`SchemaSpec.fit` on the whole table) or, with ``sample_rows``, on a
seeded uniform row sample.

Example:
    >>> import tempfile, pathlib
    >>> import numpy as np, pyarrow as pa, pyarrow.parquet as pq
    >>> from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
    >>> from mtlkit.tasks import Task
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.parquet"
    >>> pq.write_table(pa.table({"user": [f"u{i % 7}" for i in range(1000)], "x": np.arange(1000.0),
    ...                          "click": np.arange(1000) % 2}), path, row_group_size=100)
    >>> spec = SchemaSpec(categorical=[CategoricalFeature(name="user")], numeric=[NumericFeature(name="x")])
    >>> schema = fit_schema_streaming(spec, path)
    >>> len(schema.categorical[0].vocabulary)
    7
    >>> source = ParquetBatches(path, schema, [Task(name="click", kind="binary")], batch_size=64,
    ...                         buffer_rows=256, seed=0)
    >>> len(source), sum(step[0].size for step in source.epoch(0))
    (16, 1000)
    >>> source.peak_buffer_rows <= 256 + 100
    True
    >>> tail = next(source.epoch(0, start_step=15))[0]     # resumed at the last step
    >>> bool((tail.targets["click"] == list(source.epoch(0))[15][0].targets["click"]).all())
    True
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mtlkit.data.batch import Batch, BatchSource
from mtlkit.data.encoding import as_strings, fit_sequence, float_column, sequence_items, transform_values
from mtlkit.data.features import CategoricalFeature, FittedCategorical, FittedNumeric, SequenceFeature
from mtlkit.data.readers import PARQUET_SUFFIXES, open_parquet, read_row_group
from mtlkit.data.schema import FittedSchema, SchemaSpec
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import Task

Key = tuple[str, str]  # ("inputs" | "targets" | "masks" | "weights", name)
_GROUPS = ("inputs", "targets", "masks", "weights")


class StreamingSpec(BaseModel):
    """``data.streaming``: train from Parquet on disk instead of a table in memory.

    ``fit_sample_rows`` fits the schema on a seeded sample of about that many rows instead of
    exact streaming counts over the whole file (``min_freq`` then counts in the sample).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    buffer_rows: int = Field(default=200_000, ge=1)
    prefetch: int = Field(default=2, ge=0)
    fit_sample_rows: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class RowGroup:
    path: Path
    index: int  # within its file
    rows: int
    offset: int = 0  # rows of the file before it

    @property
    def source(self) -> str:
        """How errors name it: data rows in messages count from the group's first row."""
        return f"{self.path} (row group {self.index}, file rows {self.offset + 1}-{self.offset + self.rows})"


def parquet_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files behind ``paths``: Parquet files, or directories whose ``*.parquet``/``*.pq`` files are taken in name order."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{item}: directory holds no .parquet files")
            files += found
        elif not item.exists():
            raise DataError(f"{item}: no such file")
        elif item.suffix.lower() not in PARQUET_SUFFIXES:
            raise DataError(f"{item}: streaming reads Parquet (.parquet/.pq), not {item.suffix or 'a file without suffix'}")
        else:
            files.append(item)
    if not files:
        raise DataError("no Parquet files to stream")
    return files


def _open(path: Path) -> pq.ParquetFile:
    return open_parquet(path)  # page checksums verified where the file has them


def row_groups(files: Sequence[Path], columns: Sequence[str] = ()) -> list[RowGroup]:
    """Non-empty row groups of ``files`` in order; every file must hold ``columns``."""
    groups = []
    for path in files:
        handle = _open(path)
        missing = [c for c in columns if c not in handle.schema_arrow.names]
        if missing:
            raise DataError(f"{path}: missing column {missing[0]!r}")
        sizes = [handle.metadata.row_group(i).num_rows for i in range(handle.metadata.num_row_groups)]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        groups += [RowGroup(path, i, n, offsets[i]) for i, n in enumerate(sizes) if n]
    if not groups:
        raise DataError(f"{files[0]}: has no rows")
    return groups


class _Files(dict):
    """Open Parquet files by path, closed together when the epoch (or fit) ends."""

    def get_file(self, path: Path) -> pq.ParquetFile:
        return self.get(path) or self.setdefault(path, _open(path))

    def __enter__(self) -> _Files:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.values():
            handle.close()


def _read(files: _Files, group: RowGroup, columns: Sequence[str], use_threads: bool = False) -> pa.Table:
    # checksums and the column statistics verified (mtlkit.data.readers)
    return read_row_group(files.get_file(group.path), group.path, group.index, group.offset, list(columns), use_threads=use_threads)


def _tables(groups: Sequence[RowGroup], columns: Sequence[str]) -> Iterator[tuple[RowGroup, pa.Table]]:
    with _Files() as files:
        for group in groups:
            yield group, _read(files, group, columns)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _needed_columns(schema: FittedSchema, tasks: Sequence[Task]) -> list[str]:
    # group ids (GAUC) are evaluation-only: the training stream leaves them unread
    names = [*schema.feature_columns, *(f.name for f in schema.bias)]
    names += [column for task in tasks for role, column in task.columns().items() if role != "group"]
    return list(dict.fromkeys(names))


class _Buffer:
    """Rows in slots ``[0, n)`` of preallocated columns; ``pos`` is each slot's row number in the epoch.

    Columns are allocated on the first write, so the index plan can run without any data.
    """

    def __init__(self, capacity: int) -> None:
        self.pos = np.empty(capacity, dtype=np.int64)
        self.n = 0
        self.peak = 0
        self.columns: dict[Key, Tensor] = {}

    def _allocate(self, data: dict[Key, Tensor]) -> None:
        if not self.columns:
            self.columns = {k: torch.empty((len(self.pos), *v.shape[1:]), dtype=v.dtype) for k, v in data.items()}

    def append(self, positions: np.ndarray, data: dict[Key, Tensor] | None) -> None:
        lo, hi = self.n, self.n + len(positions)
        self.pos[lo:hi] = positions
        if data is not None:
            self._allocate(data)
            for key, column in self.columns.items():
                column[lo:hi] = data[key]
        self.n = hi
        self.peak = max(self.peak, hi)

    def fill(self, slots: np.ndarray, data: dict[Key, Tensor]) -> None:
        self._allocate(data)
        index = torch.from_numpy(slots)
        for key, column in self.columns.items():
            column[index] = data[key]

    def take(self, slots: np.ndarray, with_data: bool) -> dict[Key, Tensor] | None:
        """Remove the rows at ``slots`` (distinct) and return them in that order; the last rows fill the holes."""
        index = torch.from_numpy(slots)
        out = {key: column[index] for key, column in self.columns.items()} if with_data else None
        rest = self.n - len(slots)
        taken_tail = np.zeros(len(slots), dtype=bool)
        taken_tail[slots[slots >= rest] - rest] = True
        holes = np.sort(slots[slots < rest])
        movers = rest + np.flatnonzero(~taken_tail)
        self.pos[holes] = self.pos[movers]
        if with_data and len(holes):
            h, m = torch.from_numpy(holes), torch.from_numpy(movers)
            for column in self.columns.values():
                column[h] = column[m]
        self.n = rest
        return out


def _flat(table) -> dict[Key, Tensor]:
    return {(group, name): t for group in _GROUPS for name, t in getattr(table, group).items()}


def _batch(data: dict[Key, Tensor]) -> Batch:
    parts: dict[str, dict[str, Tensor]] = {g: {} for g in _GROUPS}
    for (group, name), tensor in data.items():
        parts[group][name] = tensor
    return Batch(parts["inputs"], parts["targets"], parts["masks"], parts["weights"])


def _seed(seed: int) -> int:
    return seed % 2**63  # numpy seed sequences take non-negative integers


class ParquetBatches(BatchSource):
    """Shuffled, sharded, exactly resumable batches streamed from Parquet files; see the module docstring.

    ``use_threads`` lets Arrow decode a row group on several cores (default: one).
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        schema: FittedSchema,
        tasks: Sequence[Task],
        batch_size: int,
        buffer_rows: int = 200_000,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int = 2,
        use_threads: bool = False,
    ) -> None:
        if batch_size < 1 or buffer_rows < 1 or prefetch < 0:
            raise ConfigError(f"batch_size and buffer_rows must be at least 1 and prefetch at least 0, got {batch_size}, {buffer_rows}, {prefetch}")
        if (rank is None) != (world_size is None):
            raise ConfigError("give both rank and world_size, or neither (then torch.distributed's are used)")
        rank, world_size = (rank, world_size) if rank is not None else _distributed()
        assert rank is not None and world_size is not None
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        self.files = parquet_files(paths)
        self.schema = schema
        for task in tasks:
            if task.needs_groups:
                raise ConfigError(f"task {task.name!r}: loss {task.loss!r} compares rows within a group, which streamed "
                                  "training does not support; train from an in-memory table")
        # Group ids (GAUC) are evaluation-only extras: leave the column unread.
        self.tasks = [t.model_copy(update={"group_column": None}) for t in tasks]
        self.columns = _needed_columns(schema, self.tasks)
        all_groups = row_groups(self.files, self.columns)
        if len(all_groups) < world_size:
            raise DataError(f"{self.files[0]}: {len(all_groups)} row groups cannot feed {world_size} ranks: write smaller row groups")
        self.groups = all_groups[rank::world_size]
        self.batch_size, self.buffer_rows, self.shuffle = batch_size, buffer_rows, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.prefetch, self.use_threads = prefetch, use_threads
        self.rows = sum(g.rows for g in self.groups)
        self._steps = min(-(-sum(g.rows for g in all_groups[r::world_size]) // batch_size) for r in range(world_size))
        self.peak_buffer_rows = 0  # the most rows the shuffle buffer held (tests assert the bound on it)

    def __len__(self) -> int:
        return self._steps

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[list[Batch]]:
        steps = self._shuffled(epoch, start_step) if self.shuffle else self._in_order(start_step)
        return _prefetched(steps, self.prefetch) if self.prefetch else steps

    # -- reading ----------------------------------------------------------------------------
    def _encode(self, group: RowGroup, files: _Files) -> dict[Key, Tensor]:
        table = _read(files, group, self.columns, self.use_threads)
        return _flat(self.schema.encode(table, self.tasks, group.source))

    # -- one epoch, shuffled --------------------------------------------------------------------
    def _shuffled(self, epoch: int, start_step: int) -> Iterator[list[Batch]]:
        seed = _seed(self.seed)
        order = np.random.default_rng([seed, epoch, self.rank, 0]).permutation(len(self.groups))
        groups = [self.groups[i] for i in order]
        starts = np.concatenate([[0], np.cumsum([g.rows for g in groups])])
        draws = np.random.default_rng([seed, epoch, self.rank, 1])
        fill_to = max(self.buffer_rows, self.batch_size)
        buffer = _Buffer(fill_to + max(g.rows for g in groups))
        loaded = 0
        with _Files() as files:
            for step in range(len(self)):
                live = step >= start_step  # before it: the index plan only
                if step == start_step and step > 0:
                    self._restore(buffer, groups, starts, files)
                while buffer.n < fill_to and loaded < len(groups):
                    rows = np.arange(starts[loaded], starts[loaded + 1])
                    buffer.append(rows, self._encode(groups[loaded], files) if live else None)
                    loaded += 1
                slots = draws.choice(buffer.n, size=min(self.batch_size, buffer.n), replace=False)
                data = buffer.take(slots, with_data=live)
                self.peak_buffer_rows = max(self.peak_buffer_rows, buffer.peak)
                if data is not None:
                    yield [_batch(data)]

    def _restore(self, buffer: _Buffer, groups: list[RowGroup], starts: np.ndarray, files: _Files) -> None:
        """Read back the rows the replayed plan left in the buffer, one row group at a time."""
        positions = buffer.pos[: buffer.n]
        owner = np.searchsorted(starts, positions, side="right") - 1
        for g in np.unique(owner):
            slots = np.flatnonzero(owner == g)
            encoded = self._encode(groups[g], files)
            rows = torch.from_numpy(positions[slots] - starts[g])
            buffer.fill(slots, {key: column[rows] for key, column in encoded.items()})

    # -- one epoch, file order --------------------------------------------------------------------
    def _in_order(self, start_step: int) -> Iterator[list[Batch]]:
        skip = start_step * self.batch_size  # rows before the first batch to yield
        step, carry = start_step, None
        with _Files() as files:
            for group in self.groups:
                if step >= len(self):
                    return
                if skip >= group.rows:  # resuming: whole groups before the position are not read
                    skip -= group.rows
                    continue
                data = self._encode(group, files)
                if skip:
                    data, skip = {k: v[skip:] for k, v in data.items()}, 0
                if carry is not None:
                    data = {k: torch.cat([carry[k], v]) for k, v in data.items()}
                n, lo = len(next(iter(data.values()))), 0
                while n - lo >= self.batch_size and step < len(self):
                    yield [_batch({k: v[lo : lo + self.batch_size] for k, v in data.items()})]
                    lo, step = lo + self.batch_size, step + 1
                carry = {k: v[lo:].clone() for k, v in data.items()} if lo < n else None
            if carry is not None and step < len(self):
                yield [_batch(carry)]


_DONE = object()


@dataclass
class _Failure:
    error: BaseException


def _prefetched(steps: Iterator[list[Batch]], depth: int) -> Iterator[list[Batch]]:
    """``steps`` produced by one background thread, at most ``depth`` ahead; errors re-raised here."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in steps:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer
            put(_Failure(error))

    worker = threading.Thread(target=produce, name="mtlkit-parquet-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()  # the consumer stopped early (or is done): the producer ends at its next put
        worker.join()


@dataclass(frozen=True)
class StreamedTrain:
    """A training split left on disk (``data.streaming``): fit the schema on it, stream batches from it."""

    files: list[Path]
    spec: StreamingSpec

    @classmethod
    def open(cls, paths: str | Path | Sequence[str | Path], spec: StreamingSpec) -> StreamedTrain:
        return cls(parquet_files(paths), spec)

    def empty_table(self) -> pa.Table:
        """No rows, the first file's columns: enough for checks that only look at column names."""
        return _open(self.files[0]).schema_arrow.empty_table()

    def fit(self, features: SchemaSpec) -> FittedSchema:
        return fit_schema_streaming(features, self.files, sample_rows=self.spec.fit_sample_rows)

    def batches(self, schema: FittedSchema, tasks: Sequence[Task], batch_size: int, seed: int) -> ParquetBatches:
        return ParquetBatches(self.files, schema, tasks, batch_size, buffer_rows=self.spec.buffer_rows,
                              seed=seed, prefetch=self.spec.prefetch)


# -- fitting a schema without loading the file ----------------------------------------------------


class _Counts:
    """Value counts merged across row groups (vectorised; memory ∝ distinct values)."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.merged: pa.Table | None = None

    def add(self, values: pa.Array) -> None:
        counts = pc.value_counts(values.drop_null())
        self.parts.append(pa.table({"v": counts.field("values").cast(pa.string()), "c": counts.field("counts")}))
        # Merge when the pending parts outgrow the merged table: amortised linear work.
        if sum(p.num_rows for p in self.parts) > max(1_000_000, self.merged.num_rows if self.merged else 0):
            self._merge()

    def _merge(self) -> None:
        tables = ([self.merged] if self.merged is not None else []) + self.parts
        self.parts = []
        if tables:
            combined = pa.concat_tables(tables).group_by("v").aggregate([("c", "sum")])
            self.merged = pa.table({"v": combined.column("v"), "c": combined.column("c_sum")})

    def vocabulary(self, min_freq: int) -> list[str]:
        """As :func:`mtlkit.data.schema.fit_categorical`: most frequent first, ties by value."""
        self._merge()
        if self.merged is None:
            return []
        values, freqs = self.merged.column("v").to_pylist(), self.merged.column("c").to_numpy()
        kept = sorted((int(-c), v) for v, c in zip(values, freqs) if c >= min_freq)
        return [v for _, v in kept]


class _Moments:
    """Count, mean and sum of squared deviations, merged across chunks (Chan et al.)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.missing = 0, 0.0, 0.0, False

    def add(self, values: np.ndarray, missing: bool) -> None:
        self.missing |= missing
        if not len(values):
            return
        n, mean = len(values), float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.n * n / total
        self.n = total


def fit_schema_streaming(spec: SchemaSpec, paths: str | Path | Sequence[str | Path], sample_rows: int | None = None,
                         seed: int = 0) -> FittedSchema:
    """Fit ``spec`` reading one row group at a time (only the feature columns).

    Without ``sample_rows`` the fit is exact: categorical and sequence vocabularies come from value
    counts summed over all row groups, numeric scalers from streamed moments, so the result equals
    ``spec.fit`` on the whole table (means and deviations to float rounding). Memory is one row
    group plus the vocabularies. With ``sample_rows``, each row is kept with probability
    ``sample_rows / total rows`` (a generator seeded by ``(seed, row group)``) — faster, but values
    rarer than about ``total / sample_rows`` may be missed (→ OOV) and ``min_freq`` counts in the sample.
    """
    if not spec.categorical and not spec.numeric and not spec.sequences:
        raise DataError("the schema has no features: list categorical, numeric and/or sequence columns")
    files = parquet_files(paths)
    columns = list(dict.fromkeys(spec.columns()))
    groups = row_groups(files, columns)
    total = sum(g.rows for g in groups)
    keep = None if sample_rows is None else min(1.0, sample_rows / total)
    shared = {s.name: s.share_vocabulary_with for s in spec.sequences if s.share_vocabulary_with}
    vocabularies: list[CategoricalFeature | SequenceFeature] = [*spec.categorical, *spec.sequences]
    counts = {f.name: _Counts() for f in vocabularies if not f.hash_buckets}
    counts_of_bias = {f.name: _Counts() for f in spec.bias if not f.hash_buckets}
    moments = {f.name: _Moments() for f in spec.numeric}
    for number, (group, table) in enumerate(_tables(groups, columns)):
        source = group.source
        if keep is not None and keep < 1.0:
            table = table.filter(pa.array(np.random.default_rng([_seed(seed), number]).random(table.num_rows) < keep))
        for seq in spec.sequences:
            items = sequence_items(seq.name, seq.separator, table.column(seq.name), source)[1]
            target = counts.get(shared.get(seq.name, seq.name))
            if target is not None:
                target.add(items)
        for cat in spec.categorical:
            if cat.name in counts:
                counts[cat.name].add(as_strings(table.column(cat.name)))
        for name, counter in counts_of_bias.items():
            counter.add(as_strings(table.column(name)))
        for feature in spec.numeric:
            values = float_column(table, feature.name, source)
            finite = np.isfinite(values)
            moments[feature.name].add(transform_values(values[finite], feature.transform, feature.clip), bool((~finite).any()))
    numeric = []
    for feature in spec.numeric:
        m = moments[feature.name]
        if not m.n:
            raise DataError(f"{files[0]}: numeric column {feature.name!r} has no finite value")
        std = (m.m2 / m.n) ** 0.5
        numeric.append(FittedNumeric(feature.name, feature.transform, feature.clip, m.mean, std if std > 0 else 1.0, m.missing))
    categorical = [FittedCategorical(f.name, [], f.hash_buckets) if f.hash_buckets
                   else FittedCategorical(f.name, counts[f.name].vocabulary(f.min_freq), None) for f in spec.categorical]
    sequences = []
    for seq in spec.sequences:
        fitted = fit_sequence(seq, pa.array([], pa.string()))  # settings only; the vocabulary comes from the counts
        if not seq.share_vocabulary_with and not seq.hash_buckets:
            fitted.vocabulary = counts[seq.name].vocabulary(seq.min_freq)
        sequences.append(fitted)
    bias = [FittedCategorical(f.name, [], f.hash_buckets) if f.hash_buckets
            else FittedCategorical(f.name, counts_of_bias[f.name].vocabulary(f.min_freq), None) for f in spec.bias]
    return FittedSchema(categorical, numeric, sequences, bias)


__all__ = ["ParquetBatches", "RowGroup", "StreamedTrain", "StreamingSpec", "fit_schema_streaming", "parquet_files", "row_groups"]
