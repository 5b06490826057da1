"""Feature schema: fit vocabularies and scalers on the training split, encode any split.

Categorical features get a vocabulary of values seen at least ``min_freq`` times in training;
index 0 is the bucket for unseen, rare and missing values. With ``hash_buckets`` set, values
are hashed (64-bit FNV-1a over UTF-8, stable across processes and machines) instead, which
needs no vocabulary for huge cardinalities. Numeric features are clipped, optionally
log-transformed (``sign(x)·log1p(|x|)``), standardised, and missing values (null, NaN, ±inf)
are filled with the training mean and flagged in an extra indicator column when training saw any.

The fitted schema is plain JSON, saved next to the model and re-applied at prediction time.

Example:
    >>> import pyarrow as pa
    >>> train = pa.table({"city": ["a", "b", "a", None], "age": [20.0, 30.0, None, 40.0],
    ...                   "click": [1, 0, 1, 0]})
    >>> spec = SchemaSpec(categorical=[CategoricalFeature(name="city")],
    ...                   numeric=[NumericFeature(name="age")])
    >>> fitted = spec.fit(train)
    >>> fitted.categorical[0].vocabulary, fitted.numeric[0].has_missing_flag
    (['a', 'b'], True)
    >>> tasks = [Task(name="click", kind="binary")]
    >>> table = fitted.encode(pa.table({"city": ["b", "zz"], "age": [30.0, 10.0], "click": [0, 1]}), tasks)
    >>> table.inputs["categorical"].tolist()   # 'zz' was never seen: OOV bucket 0
    [[2], [0]]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import DataError
from mtlkit.tasks import Task

SCHEMA_FORMAT_VERSION = 1


class CategoricalFeature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    min_freq: int = Field(default=1, ge=1)
    hash_buckets: Optional[int] = Field(default=None, ge=1)


class NumericFeature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    transform: Literal["standard", "log1p", "none"] = "standard"
    clip: Optional[tuple[float, float]] = None


class SchemaSpec(BaseModel):
    """Which columns are features and how to encode them (before fitting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    categorical: list[CategoricalFeature] = Field(default_factory=list)
    numeric: list[NumericFeature] = Field(default_factory=list)

    def fit(self, train: pa.Table, source: str = "training data") -> "FittedSchema":
        _require_columns(train, [f.name for f in [*self.categorical, *self.numeric]], source)
        if not self.categorical and not self.numeric:
            raise DataError("the schema has no features: list categorical and/or numeric columns")
        return FittedSchema(
            categorical=[_fit_categorical(f, train.column(f.name)) for f in self.categorical],
            numeric=[_fit_numeric(f, train.column(f.name), source) for f in self.numeric],
        )


@dataclass
class FittedCategorical:
    name: str
    vocabulary: list[str] = field(default_factory=list)
    hash_buckets: Optional[int] = None

    @property
    def cardinality(self) -> int:
        """Rows of the embedding table, the OOV/missing bucket 0 included."""
        return 1 + (self.hash_buckets if self.hash_buckets else len(self.vocabulary))


@dataclass
class FittedNumeric:
    name: str
    transform: str
    clip: Optional[tuple[float, float]]
    mean: float
    std: float
    has_missing_flag: bool


@dataclass
class FittedSchema:
    """Vocabularies and scalers fit on training data; encodes any split the same way."""

    categorical: list[FittedCategorical]
    numeric: list[FittedNumeric]

    @property
    def cardinalities(self) -> list[int]:
        return [f.cardinality for f in self.categorical]

    @property
    def numeric_dim(self) -> int:
        return len(self.numeric) + sum(f.has_missing_flag for f in self.numeric)

    @property
    def feature_columns(self) -> list[str]:
        return [f.name for f in self.categorical] + [f.name for f in self.numeric]

    def encode(self, table: pa.Table, tasks: Sequence[Task], source: str = "data", with_targets: bool = True) -> EncodedTable:
        """Encode features (and, with ``with_targets``, labels, weights and masks) of ``table``."""
        _require_columns(table, self.feature_columns, source)
        inputs: dict[str, torch.Tensor] = {}
        if self.categorical:
            ids = np.stack([_encode_categorical(f, table.column(f.name)) for f in self.categorical], axis=1)
            inputs["categorical"] = torch.from_numpy(ids)
        if self.numeric:
            dense = np.concatenate([_encode_numeric(f, table.column(f.name)) for f in self.numeric], axis=1)
            inputs["numeric"] = torch.from_numpy(dense)
        if not with_targets:
            return EncodedTable(inputs=inputs, targets={}, masks={})
        targets, masks, weights, extras = {}, {}, {}, {}
        for task in tasks:
            targets[task.name], masks[task.name] = _encode_target(task, table, source)
            if task.weight_column:
                weights[task.name] = torch.from_numpy(_float_column(table, task.weight_column, source, allow_missing=False))
            if task.mask:
                in_space = _float_column(table, task.mask.column, source) == task.mask.equals
                masks[task.name] &= torch.from_numpy(in_space)
            if task.group_column and task.group_column not in extras:
                _require_columns(table, [task.group_column], source)
                groups = pc.dictionary_encode(table.column(task.group_column).combine_chunks())
                extras[task.group_column] = torch.from_numpy(groups.indices.to_numpy(zero_copy_only=False).astype(np.int64))
        return EncodedTable(inputs=inputs, targets=targets, masks=masks, weights=weights, extras=extras)

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": SCHEMA_FORMAT_VERSION,
            "categorical": [asdict(f) for f in self.categorical],
            "numeric": [asdict(f) for f in self.numeric],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FittedSchema":
        if data.get("format_version") != SCHEMA_FORMAT_VERSION:
            raise DataError(f"unsupported schema format version {data.get('format_version')!r}")
        numeric = []
        for f in data["numeric"]:
            clip = tuple(f["clip"]) if f["clip"] is not None else None
            numeric.append(FittedNumeric(**{**f, "clip": clip}))
        return cls([FittedCategorical(**f) for f in data["categorical"]], numeric)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "FittedSchema":
        return cls.from_dict(json.loads(Path(path).read_text()))


# -- helpers ----------------------------------------------------------------------------------


def _require_columns(table: pa.Table, names: Sequence[str], source: str) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r} (columns are: {', '.join(table.column_names[:20])}{' …' if table.num_columns > 20 else ''})")


def _as_strings(column: pa.ChunkedArray) -> pa.Array:
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


def _fit_categorical(feature: CategoricalFeature, column: pa.ChunkedArray) -> FittedCategorical:
    if feature.hash_buckets:
        return FittedCategorical(feature.name, [], feature.hash_buckets)
    counts = pc.value_counts(_as_strings(column).drop_null())
    values = counts.field("values").to_pylist()
    freqs = counts.field("counts").to_numpy()
    kept = [(int(-c), v) for v, c in zip(values, freqs) if c >= feature.min_freq]
    kept.sort()  # most frequent first, ties by value: deterministic across runs
    return FittedCategorical(feature.name, [v for _, v in kept], None)


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


def _encode_categorical(feature: FittedCategorical, column: pa.ChunkedArray) -> np.ndarray:
    strings = _as_strings(column)
    if feature.hash_buckets:
        ids = (stable_hash(strings) % np.uint64(feature.hash_buckets)).astype(np.int64) + 1
        return np.where(strings.is_null().to_numpy(zero_copy_only=False), 0, ids)
    index = pc.index_in(strings, value_set=pa.array(feature.vocabulary, type=pa.string()))
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def _float_column(table: pa.Table, name: str, source: str, allow_missing: bool = True) -> np.ndarray:
    _require_columns(table, [name], source)
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


def _transform(values: np.ndarray, transform: str, clip: Optional[tuple[float, float]]) -> np.ndarray:
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    if transform == "log1p":
        values = np.sign(values) * np.log1p(np.abs(values))
    return values


def _fit_numeric(feature: NumericFeature, column: pa.ChunkedArray, source: str) -> FittedNumeric:
    values = _float_column(pa.table({feature.name: column}), feature.name, source)
    finite = np.isfinite(values)
    if not finite.any():
        raise DataError(f"{source}: numeric column {feature.name!r} has no finite value")
    transformed = _transform(values[finite], feature.transform, feature.clip)
    mean = float(transformed.mean())
    std = float(transformed.std())
    return FittedNumeric(
        feature.name, feature.transform, feature.clip, mean,
        std if std > 0 else 1.0, has_missing_flag=bool((~finite).any()),
    )


def _encode_numeric(feature: FittedNumeric, column: pa.ChunkedArray) -> np.ndarray:
    values = _float_column(pa.table({feature.name: column}), feature.name, "data")
    missing = ~np.isfinite(values)
    out = _transform(np.where(missing, 0.0, values), feature.transform, feature.clip)
    if feature.transform == "none":
        out = np.where(missing, feature.mean, out)
    else:  # standardised: the training mean maps to 0
        out = np.where(missing, 0.0, (out - feature.mean) / feature.std)
    columns = [out] + ([missing.astype(np.float64)] if feature.has_missing_flag else [])
    return np.stack(columns, axis=1).astype(np.float32)


def _encode_target(task: Task, table: pa.Table, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    values = _float_column(table, task.label, source)  # type: ignore[arg-type]
    problem = task.label_problem(values)
    if problem:
        raise DataError(f"{source}: label column {task.label!r} of task {task.name!r}, {problem}")
    present = ~np.isnan(values)
    target = torch.from_numpy(np.where(present, values, 0.0)).to(task.target_dtype)
    return target, torch.from_numpy(present)
