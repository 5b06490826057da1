"""Column-level fitting and encoding: what :class:`~mtlkit.data.schema.SchemaSpec` does to each column.

Every function takes Arrow columns and gives numpy arrays (or tensors for labels and weights), with
errors that name the source, the column and the row. The schema, the streaming reader
(:mod:`mtlkit.data.streaming`: it fits vocabularies over row groups it never holds together), the
data doctor and negative sampling share them, so a value means the same thing everywhere:
``3.0`` and ``3`` are one category (:func:`as_strings`), a hashed id is the same 64-bit FNV-1a in
every process (:func:`stable_hash`), a numeric column is read the same way (:func:`float_column`).

Example:
    >>> import pyarrow as pa
    >>> as_strings(pa.chunked_array([[3.0, None, 4.0]])).to_pylist()
    ['3', None, '4']
    >>> encode_categorical(FittedCategorical("city", ["a", "b"]), pa.chunked_array([["b", "zz", None]])).tolist()
    [2, 0, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mtlkit.data import admission
from mtlkit.data.features import (
    CategoricalFeature,
    DienOptions,
    FittedCategorical,
    FittedNumeric,
    FittedSequence,
    NumericFeature,
    SequenceFeature,
)
from mtlkit.errors import DataError
from mtlkit.tasks import Task


def require_columns(table: pa.Table, names: Sequence[str], source: str) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r} (columns are: {', '.join(table.column_names[:20])}{' …' if table.num_columns > 20 else ''})")


def as_strings(column: pa.ChunkedArray) -> pa.Array:
    column = column.combine_chunks()
    if pa.types.is_floating(column.type):
        # 3.0 and 3 are the same category; render integral floats without the '.0'.
        values = column.to_numpy(zero_copy_only=False)
        integral = np.isfinite(values) & (values == np.round(values))
        if integral[~np.isnan(values)].all():
            column = pa.array(values, mask=np.isnan(values)).cast(pa.int64())
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return pc.cast(column, pa.string())


def fit_categorical(feature: CategoricalFeature, column: pa.ChunkedArray, extra: Sequence[pa.Array] = ()) -> FittedCategorical:
    """``extra``: item strings of the sequences sharing this vocabulary, counted with the column."""
    if feature.hash_buckets and feature.min_freq == 1:
        return FittedCategorical(feature.name, [], feature.hash_buckets)
    values = pa.concat_arrays([as_strings(column), *extra]) if extra else as_strings(column)
    if feature.hash_buckets:  # admission: only values seen min_freq times get a bucket
        kept = admission.admitted(stable_hash(values.drop_null()), feature.min_freq)
        return FittedCategorical(feature.name, [], feature.hash_buckets, admission.pack(kept))
    counts = pc.value_counts(values.drop_null())
    values = counts.field("values").to_pylist()
    freqs = counts.field("counts").to_numpy()
    ranked = [(int(-c), v) for v, c in zip(values, freqs) if c >= feature.min_freq]
    ranked.sort()  # most frequent first, ties by value: deterministic across runs
    return FittedCategorical(feature.name, [v for _, v in ranked], None)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def stable_hash(strings: pa.Array) -> np.ndarray:
    """64-bit FNV-1a of each UTF-8 string, vectorised over rows (loops over byte positions)."""
    strings = pc.fill_null(strings, "").cast(pa.large_string())
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset : strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8) if strings.buffers()[2] else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    hashes = np.full(len(strings), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(int(lengths.max(initial=0))):
            active = lengths > k
            hashes[active] = (hashes[active] ^ data[starts[active] + k].astype(np.uint64)) * _FNV_PRIME
    return hashes


def fit_sequence(feature: SequenceFeature, items: pa.Array) -> FittedSequence:
    fitted = FittedSequence(
        feature.name, feature.max_len, feature.pooling, feature.target, feature.share_vocabulary_with,
        feature.separator, normalize=feature.normalize, attention_hidden=list(feature.attention_hidden),
        dien=(feature.dien or DienOptions()).model_dump() if feature.pooling == "dien" else None,
    )
    if not feature.share_vocabulary_with:
        own = fit_categorical(CategoricalFeature(name=feature.name, min_freq=feature.min_freq, hash_buckets=feature.hash_buckets),
                               pa.chunked_array([items], type=pa.string()))
        fitted.vocabulary, fitted.hash_buckets, fitted.admitted = own.vocabulary, own.hash_buckets, own.admitted
    return fitted


def sequence_items(name: str, separator: str | None, column: pa.ChunkedArray, source: str) -> tuple[np.ndarray, pa.Array]:
    """Row index and string of every item of a list or delimited column, in order (nulls and '' dropped)."""
    column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        if separator is None:
            raise DataError(f"{source}: sequence column {name!r} holds strings: set `separator` (e.g. '|') or store it as a list column")
        lists = pc.split_pattern(column, pattern=separator)
        trim = True
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type):
        lists, trim = column, False
    else:
        raise DataError(f"{source}: sequence column {name!r} must be a list column or a delimited string column, found {column.type}")
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists)
    if pa.types.is_null(values.type):  # every list empty or null: nothing to type the items by
        return np.zeros(0, np.int64), pa.array([], pa.string())
    strings = as_strings(pa.chunked_array([values]))
    if trim:
        strings = pc.utf8_trim_whitespace(strings)
    keep = pc.fill_null(pc.greater(pc.utf8_length(strings), 0), False)
    return parents[keep.to_numpy(zero_copy_only=False)], strings.filter(keep)


def encode_sequence(feature: FittedSequence, vocabulary: FittedCategorical | FittedSequence, column: pa.ChunkedArray, source: str) -> np.ndarray:
    """``(rows, max_len)`` ids: each row's last ``max_len`` items, left-aligned, padded with 0."""
    parents, strings = sequence_items(feature.name, feature.separator, column, source)
    lookup = FittedCategorical(feature.name, vocabulary.vocabulary, vocabulary.hash_buckets, vocabulary.admitted)
    ids = encode_categorical(lookup, pa.chunked_array([strings], type=pa.string()))
    rows = len(column)
    counts = np.bincount(parents, minlength=rows)
    position = np.arange(len(parents)) - (np.cumsum(counts) - counts)[parents]  # index within its row
    first = np.maximum(counts - feature.max_len, 0)[parents]  # the oldest item that still fits
    kept = position >= first
    out = np.zeros((rows, feature.max_len), dtype=np.int64)
    out[parents[kept], (position - first)[kept]] = ids[kept]
    return out


def encode_categorical(feature: FittedCategorical, column: pa.ChunkedArray) -> np.ndarray:
    strings = as_strings(column)
    if feature.hash_buckets:
        hashes = stable_hash(strings)
        ids = (hashes % np.uint64(feature.hash_buckets)).astype(np.int64) + 1
        kept = feature.admitted_hashes()
        if kept is not None:  # values rarer than min_freq in training share the OOV row 0
            ids = np.where(admission.is_admitted(hashes, kept), ids, 0)
        return np.where(strings.is_null().to_numpy(zero_copy_only=False), 0, ids)
    if 64 * len(strings) < len(feature.vocabulary):  # a few rows against a large catalogue (serving)
        positions = feature.positions()
        return np.fromiter((positions.get(v, 0) for v in strings.to_pylist()), dtype=np.int64, count=len(strings))
    # index_in hashes the value set on every call: fine when the batch is at least as large.
    index = pc.index_in(strings, value_set=feature.value_set())
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def float_column(table: pa.Table, name: str, source: str, allow_missing: bool = True) -> np.ndarray:
    require_columns(table, [name], source)
    column = table.column(name).combine_chunks()
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.int8())
    try:
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{source}: column {name!r} must be numeric, found {column.type}") from None
    values = np.array(values, dtype=np.float64)  # a writable copy: torch.from_numpy needs one
    if not allow_missing and np.isnan(values).any():
        raise DataError(f"{source}: column {name!r} row {int(np.flatnonzero(np.isnan(values))[0])}: missing value")
    return values


def transform_values(values: np.ndarray, transform: str, clip: tuple[float, float] | None) -> np.ndarray:
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    if transform == "log1p":
        values = np.sign(values) * np.log1p(np.abs(values))
    return values


def fit_numeric(feature: NumericFeature, column: pa.ChunkedArray, source: str) -> FittedNumeric:
    values = float_column(pa.table({feature.name: column}), feature.name, source)
    finite = np.isfinite(values)
    if not finite.any():
        raise DataError(f"{source}: numeric column {feature.name!r} has no finite value")
    transformed = transform_values(values[finite], feature.transform, feature.clip)
    mean = float(transformed.mean())
    std = float(transformed.std())
    return FittedNumeric(
        feature.name, feature.transform, feature.clip, mean,
        std if std > 0 else 1.0, has_missing_flag=bool((~finite).any()),
    )


def encode_numeric(feature: FittedNumeric, column: pa.ChunkedArray, source: str) -> np.ndarray:
    values = float_column(pa.table({feature.name: column}), feature.name, source)
    missing = ~np.isfinite(values)
    out = transform_values(np.where(missing, 0.0, values), feature.transform, feature.clip)
    if feature.transform == "none":
        out = np.where(missing, feature.mean, out)
    else:  # standardised: the training mean maps to 0
        out = np.where(missing, 0.0, (out - feature.mean) / feature.std)
    columns = [out] + ([missing.astype(np.float64)] if feature.has_missing_flag else [])
    return np.stack(columns, axis=1).astype(np.float32)


def encode_target(task: Task, table: pa.Table, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Label tensor in label units (a task applies its ``label_transform`` in the loss) and the
    mask of rows whose label is present; invalid labels raise a DataError naming the row."""
    values = float_column(table, task.label, source)  # type: ignore[arg-type]
    problem = task.label_problem(values)
    if problem:
        raise DataError(f"{source}: label column {task.label!r} of task {task.name!r}, {problem}")
    present = ~np.isnan(values)
    target = torch.from_numpy(np.where(present, values, 0.0)).to(task.target_dtype)
    return target, torch.from_numpy(present)


def encode_weight(task: Task, table: pa.Table, source: str, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor | None:
    """Row weights: ``weight_column`` × (``positive_weight_column`` on positives, 1 elsewhere)."""
    weight = None
    if task.weight_column:
        weight = float_column(table, task.weight_column, source, allow_missing=False)
    if task.positive_weight_column:
        name = task.positive_weight_column
        values = float_column(table, name, source)
        positive = (target.numpy() == 1) & present.numpy()
        # Negatives weigh 1 whatever the column holds (watch time is usually missing without a click).
        bad = positive & ~(np.isfinite(values) & (values >= 0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: column {name!r} (positive weights of task {task.name!r}) data row {row + 1}: "
                            f"value {float(values[row])!r} on a positive row (expected a finite number >= 0)")
        positive_weight = np.where(positive, values, 1.0)
        weight = positive_weight if weight is None else weight * positive_weight
    return None if weight is None else torch.from_numpy(np.asarray(weight, dtype=np.float64))


__all__ = ["as_strings", "encode_categorical", "encode_numeric", "encode_sequence", "encode_target", "encode_weight", "fit_categorical",
           "fit_numeric", "fit_sequence", "float_column", "require_columns", "sequence_items", "stable_hash", "transform_values"]
