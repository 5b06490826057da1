"""Feature schema: fit vocabularies and scalers on the training split, encode any split.

Categorical features get a vocabulary of values seen at least ``min_freq`` times in training;
index 0 is the bucket for unseen, rare and missing values. With ``hash_buckets`` set, values
are hashed (64-bit FNV-1a over UTF-8, stable across processes and machines) instead, which
needs no vocabulary for huge cardinalities; ``min_freq`` then admits only values seen that often
(the others get id 0; :mod:`mtlkit.data.admission`). Numeric features are clipped, optionally
log-transformed (``sign(x)·log1p(|x|)``), standardised, and missing values (null, NaN, ±inf)
are filled with the training mean and flagged in an extra indicator column when training saw any.

Sequence features (a user's recent item ids, tags) are list columns (``list<string>``/``list<int>``)
or delimited strings (``separator``, e.g. ``'|'``). Each becomes a padded ``(B, max_len)`` id tensor
``inputs["seq:<name>"]`` holding the LAST ``max_len`` items of the list — the list is read oldest
first, so the end is the most recent — left-aligned, with padding id 0 on the right. Null and empty
items are dropped; unseen/rare items keep their place with id 0, which the pooling layers treat like
padding (``mtlkit.nn.sequence``: mask = ``ids != 0``). ``share_vocabulary_with`` names a categorical
feature (the candidate item) whose vocabulary the sequence reuses, so an item id and the same id in
the history get the same id and, in :class:`~mtlkit.nn.TabularEncoder`, the same embedding row; that
vocabulary is then fit on the categorical column and the shared sequences' items together.
``pooling: din`` is DIN target attention (Zhou et al., KDD 2018) against the categorical ``target``.

Bias features (position, device: the feature side of the YouTube 2019 shallow tower, Zhao et al.,
RecSys 2019) are categoricals with their own vocabularies, encoded apart from the main features into
``inputs["bias"]``, a ``(B, n_bias)`` LongTensor (0 = OOV/missing) with ``bias_cardinalities``; the
main encoder never reads them. At serving (``encode(..., serving=True)``, which is the default when
encoding without targets, i.e. for prediction) every bias id is 0 = missing and the columns may be
absent. Dropping the position out at 10% during training is the consumer's job (the shallow tower).

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

    Histories sharing the item vocabulary, and a position bias feature:

    >>> logs = pa.table({"item": ["x", "y", "x"], "hist": ["y|x", "", "z|y|x|y"], "pos": [1, 2, 1]})
    >>> spec = SchemaSpec(categorical=[CategoricalFeature(name="item")], bias=["pos"],
    ...                   sequences=[SequenceFeature(name="hist", max_len=3, separator="|",
    ...                                              share_vocabulary_with="item")])
    >>> fitted = spec.fit(logs)
    >>> fitted.categorical[0].vocabulary, fitted.bias_cardinalities
    (['x', 'y', 'z'], [3])
    >>> enc = fitted.encode(logs, [], serving=False)
    >>> enc.inputs["categorical"][:, 0].tolist(), enc.inputs["seq:hist"].tolist()
    ([1, 2, 1], [[2, 1, 0], [0, 0, 0], [2, 1, 2]])
    >>> enc.inputs["bias"].tolist(), fitted.encode(logs, [], serving=True).inputs["bias"].tolist()
    ([[1], [2], [1]], [[0], [0], [0]])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mtlkit.data import admission
from mtlkit.data.batch import EncodedTable
from mtlkit.data.tables import TableLike, as_arrow
from mtlkit.errors import DataError
from mtlkit.outputs import write_text
from mtlkit.tasks import Task

SCHEMA_FORMAT_VERSION = 1


class CategoricalFeature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    min_freq: int = Field(default=1, ge=1)
    hash_buckets: int | None = Field(default=None, ge=1)


class NumericFeature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    transform: Literal["standard", "log1p", "none"] = "standard"
    clip: tuple[float, float] | None = None  # [low, high]; ±.inf leaves that side open

    @field_validator("clip")
    @classmethod
    def _ordered(cls, clip: tuple[float, float] | None) -> tuple[float, float] | None:
        if clip is not None and not clip[0] < clip[1]:  # also refuses NaN
            raise ValueError(f"clip must be [low, high] with low < high, got [{clip[0]:g}, {clip[1]:g}]")
        return clip


class SequenceFeature(BaseModel):
    """A multi-valued column pooled into one vector; see the module docstring for the format."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    max_len: int = Field(ge=1)
    pooling: Literal["mean", "sum", "din"] = "mean"
    target: str | None = None  # din: the categorical feature holding the candidate item
    share_vocabulary_with: str | None = None  # a categorical feature: one vocabulary, one table
    separator: str | None = Field(default=None, min_length=1)  # for delimited string columns
    min_freq: int = Field(default=1, ge=1)
    hash_buckets: int | None = Field(default=None, ge=1)
    normalize: bool = False  # din: softmax over the valid positions (the paper does not normalise)
    attention_hidden: tuple[int, ...] = (36,)  # din: the local activation unit's hidden layers

    @model_validator(mode="after")
    def _check(self) -> SequenceFeature:
        if (self.pooling == "din") != (self.target is not None):
            raise ValueError(f"sequence {self.name!r}: `target` is required with pooling din and only allowed with it")
        if self.pooling != "din" and (self.normalize or self.attention_hidden != (36,)):
            raise ValueError(f"sequence {self.name!r}: `normalize`/`attention_hidden` need pooling din")
        if self.share_vocabulary_with and (self.min_freq != 1 or self.hash_buckets):
            raise ValueError(f"sequence {self.name!r}: min_freq/hash_buckets come from {self.share_vocabulary_with!r} when sharing its vocabulary")
        return self


class SchemaSpec(BaseModel):
    """Which columns are features and how to encode them (before fitting).

    ``sequences`` and ``bias`` are described in the module docstring; a bare column name stands
    for a bias feature with default settings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    categorical: list[CategoricalFeature] = Field(default_factory=list)
    numeric: list[NumericFeature] = Field(default_factory=list)
    sequences: list[SequenceFeature] = Field(default_factory=list)
    bias: list[CategoricalFeature] = Field(default_factory=list)

    def columns(self) -> list[str]:
        """Every column the features read: categorical, numeric, sequences, then bias."""
        return [f.name for f in [*self.categorical, *self.numeric, *self.sequences, *self.bias]]

    @field_validator("bias", mode="before")
    @classmethod
    def _bias_names(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _check_references(self) -> SchemaSpec:
        names = [f.name for f in [*self.categorical, *self.numeric, *self.sequences]]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"feature {duplicate!r} is listed twice")
        bias_names = [f.name for f in self.bias]
        if len(set(bias_names)) != len(bias_names):
            raise ValueError(f"bias features must be distinct, got {bias_names}")
        categorical = {f.name for f in self.categorical}
        for seq in self.sequences:
            for key in ("target", "share_vocabulary_with"):
                ref = getattr(seq, key)
                if ref is not None and ref not in categorical:
                    raise ValueError(f"sequence {seq.name!r}: {key} {ref!r} is not a categorical feature")
        return self

    def fit(self, train: TableLike, source: str = "training data") -> FittedSchema:
        train = as_arrow(train, source)  # a pandas DataFrame too
        _require_columns(train, [f.name for f in [*self.categorical, *self.numeric, *self.sequences, *self.bias]], source)
        if not self.categorical and not self.numeric and not self.sequences:
            raise DataError("the schema has no features: list categorical, numeric and/or sequence columns")
        items = {s.name: _sequence_items(s.name, s.separator, train.column(s.name), source)[1] for s in self.sequences}
        shared: dict[str, list[pa.Array]] = {}
        for seq in self.sequences:
            if seq.share_vocabulary_with:
                shared.setdefault(seq.share_vocabulary_with, []).append(items[seq.name])
        return FittedSchema(
            categorical=[_fit_categorical(f, train.column(f.name), shared.get(f.name, ())) for f in self.categorical],
            numeric=[_fit_numeric(f, train.column(f.name), source) for f in self.numeric],
            sequences=[_fit_sequence(s, items[s.name]) for s in self.sequences],
            bias=[_fit_categorical(f, train.column(f.name)) for f in self.bias],
        )


@dataclass
class FittedCategorical:
    name: str
    vocabulary: list[str] = field(default_factory=list)
    hash_buckets: int | None = None
    admitted: str | None = None  # hashed with min_freq > 1: the admitted values' hashes (mtlkit.data.admission)

    def admitted_hashes(self) -> np.ndarray | None:
        """The admitted hashes, decoded once (``None``: every value is admitted)."""
        if self.admitted is None:
            return None
        cached = self.__dict__.get("_admitted")
        if cached is None or cached[0] is not self.admitted:
            cached = self.__dict__["_admitted"] = (self.admitted, admission.unpack(self.admitted))
        return cached[1]

    @property
    def cardinality(self) -> int:
        """Rows of the embedding table, the OOV/missing bucket 0 included."""
        return 1 + (self.hash_buckets if self.hash_buckets else len(self.vocabulary))

    def value_set(self) -> pa.Array:
        """The vocabulary as an Arrow array, built once (encoding is called per request when serving)."""
        cached = self.__dict__.get("_value_set")
        if cached is None or len(cached) != len(self.vocabulary):
            cached = self.__dict__["_value_set"] = pa.array(self.vocabulary, type=pa.string())
        return cached

    def positions(self) -> dict[str, int]:
        """Vocabulary → 1-based id, built once: small batches look ids up in O(rows), not O(vocabulary)."""
        cached = self.__dict__.get("_positions")
        if cached is None or len(cached) != len(self.vocabulary):
            cached = self.__dict__["_positions"] = {v: i + 1 for i, v in enumerate(self.vocabulary)}
        return cached


@dataclass
class FittedNumeric:
    name: str
    transform: str
    clip: tuple[float, float] | None
    mean: float
    std: float
    has_missing_flag: bool


@dataclass
class FittedSequence:
    name: str
    max_len: int
    pooling: str
    target: str | None = None
    share_vocabulary_with: str | None = None
    separator: str | None = None
    vocabulary: list[str] = field(default_factory=list)  # empty when sharing
    hash_buckets: int | None = None
    normalize: bool = False
    attention_hidden: list[int] = field(default_factory=lambda: [36])
    admitted: str | None = None  # as FittedCategorical.admitted (own hashed vocabulary only)

    @property
    def cardinality(self) -> int:
        """Rows of its own embedding table (0 when it shares a categorical feature's)."""
        if self.share_vocabulary_with:
            return 0
        return 1 + (self.hash_buckets if self.hash_buckets else len(self.vocabulary))

    @property
    def input_key(self) -> str:
        return f"seq:{self.name}"


@dataclass
class FittedSchema:
    """Vocabularies and scalers fit on training data; encodes any split the same way."""

    categorical: list[FittedCategorical]
    numeric: list[FittedNumeric]
    sequences: list[FittedSequence] = field(default_factory=list)
    bias: list[FittedCategorical] = field(default_factory=list)

    @property
    def cardinalities(self) -> list[int]:
        return [f.cardinality for f in self.categorical]

    @property
    def bias_cardinalities(self) -> list[int]:
        return [f.cardinality for f in self.bias]

    @property
    def numeric_dim(self) -> int:
        return len(self.numeric) + sum(f.has_missing_flag for f in self.numeric)

    @property
    def feature_columns(self) -> list[str]:
        """Columns every split must have (bias columns are optional at serving)."""
        return [f.name for f in [*self.categorical, *self.numeric, *self.sequences]]

    def encode(
        self,
        table: TableLike,
        tasks: Sequence[Task],
        source: str = "data",
        with_targets: bool = True,
        serving: bool | None = None,
    ) -> EncodedTable:
        """Encode features (and, with ``with_targets``, labels, weights and masks) of ``table``.

        ``serving`` (default: ``not with_targets``) sets every bias id to 0 = missing, so serving
        predictions never use position; otherwise the bias columns are required. ``table``: a
        pyarrow Table or a pandas DataFrame.
        """
        table = as_arrow(table, source)
        _require_columns(table, self.feature_columns, source)
        serving = not with_targets if serving is None else serving
        inputs: dict[str, torch.Tensor] = {}
        if self.categorical:
            ids = np.stack([_encode_categorical(f, table.column(f.name)) for f in self.categorical], axis=1)
            inputs["categorical"] = torch.from_numpy(ids)
        if self.numeric:
            dense = np.concatenate([_encode_numeric(f, table.column(f.name), source) for f in self.numeric], axis=1)
            inputs["numeric"] = torch.from_numpy(dense)
        by_name = {f.name: f for f in self.categorical}
        for seq in self.sequences:
            vocabulary = by_name[seq.share_vocabulary_with] if seq.share_vocabulary_with else seq
            inputs[seq.input_key] = torch.from_numpy(_encode_sequence(seq, vocabulary, table.column(seq.name), source))
        if self.bias:
            if serving:
                inputs["bias"] = torch.zeros(table.num_rows, len(self.bias), dtype=torch.long)
            else:
                _require_columns(table, [f.name for f in self.bias], f"{source} (bias features; encode with serving=True to leave them out)")
                inputs["bias"] = torch.from_numpy(np.stack([_encode_categorical(f, table.column(f.name)) for f in self.bias], axis=1))
        if not with_targets:
            return EncodedTable(inputs=inputs, targets={}, masks={})
        targets, masks, weights, extras = {}, {}, {}, {}
        for task in tasks:
            targets[task.name], masks[task.name] = _encode_target(task, table, source)
            weight = _encode_weight(task, table, source, targets[task.name], masks[task.name])
            if weight is not None:
                weights[task.name] = weight
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
            "sequences": [asdict(f) for f in self.sequences],
            "bias": [asdict(f) for f in self.bias],
        }

    @classmethod
    def from_dict(cls, data: dict) -> FittedSchema:
        if not isinstance(data, dict):
            raise DataError(f"expected a JSON object, found {type(data).__name__}")
        if data.get("format_version") != SCHEMA_FORMAT_VERSION:
            raise DataError(f"unsupported schema format version {data.get('format_version')!r}")
        numeric = []
        for f in data["numeric"]:
            clip = tuple(f["clip"]) if f["clip"] is not None else None
            numeric.append(FittedNumeric(**{**f, "clip": clip}))
        # `sequences` and `bias` came later (same format version): older files simply lack them.
        sequences = [FittedSequence(**{**f, "attention_hidden": list(f.get("attention_hidden", [36]))}) for f in data.get("sequences", [])]
        bias = [FittedCategorical(**f) for f in data.get("bias", [])]
        return cls([FittedCategorical(**f) for f in data["categorical"]], numeric, sequences, bias)

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1))  # atomic: a kill never leaves half a schema

    @classmethod
    def load(cls, path: str | Path, recover: str = "") -> FittedSchema:
        """Read ``schema.json``; a damaged file is a DataError naming it (``recover``: what to do then)."""
        hint = f"; {recover}" if recover else ""
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a readable schema ({error}){hint}") from None
        try:
            return cls.from_dict(data)
        except DataError as error:
            raise DataError(f"{path}: {error}{hint}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DataError(f"{path}: not an mtlkit schema ({type(error).__name__}: {error}){hint}") from None


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


def _fit_categorical(feature: CategoricalFeature, column: pa.ChunkedArray, extra: Sequence[pa.Array] = ()) -> FittedCategorical:
    """``extra``: item strings of the sequences sharing this vocabulary, counted with the column."""
    if feature.hash_buckets and feature.min_freq == 1:
        return FittedCategorical(feature.name, [], feature.hash_buckets)
    values = pa.concat_arrays([_as_strings(column), *extra]) if extra else _as_strings(column)
    if feature.hash_buckets:  # admission: only values seen min_freq times get a bucket
        kept = admission.admitted(stable_hash(values.drop_null()), feature.min_freq)
        return FittedCategorical(feature.name, [], feature.hash_buckets, admission.pack(kept))
    counts = pc.value_counts(values.drop_null())
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


def _fit_sequence(feature: SequenceFeature, items: pa.Array) -> FittedSequence:
    fitted = FittedSequence(
        feature.name, feature.max_len, feature.pooling, feature.target, feature.share_vocabulary_with,
        feature.separator, normalize=feature.normalize, attention_hidden=list(feature.attention_hidden),
    )
    if not feature.share_vocabulary_with:
        own = _fit_categorical(CategoricalFeature(name=feature.name, min_freq=feature.min_freq, hash_buckets=feature.hash_buckets),
                               pa.chunked_array([items], type=pa.string()))
        fitted.vocabulary, fitted.hash_buckets, fitted.admitted = own.vocabulary, own.hash_buckets, own.admitted
    return fitted


def _sequence_items(name: str, separator: str | None, column: pa.ChunkedArray, source: str) -> tuple[np.ndarray, pa.Array]:
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
    strings = _as_strings(pa.chunked_array([values]))
    if trim:
        strings = pc.utf8_trim_whitespace(strings)
    keep = pc.fill_null(pc.greater(pc.utf8_length(strings), 0), False)
    return parents[keep.to_numpy(zero_copy_only=False)], strings.filter(keep)


def _encode_sequence(feature: FittedSequence, vocabulary: FittedCategorical | FittedSequence, column: pa.ChunkedArray, source: str) -> np.ndarray:
    """``(rows, max_len)`` ids: each row's last ``max_len`` items, left-aligned, padded with 0."""
    parents, strings = _sequence_items(feature.name, feature.separator, column, source)
    lookup = FittedCategorical(feature.name, vocabulary.vocabulary, vocabulary.hash_buckets, vocabulary.admitted)
    ids = _encode_categorical(lookup, pa.chunked_array([strings], type=pa.string()))
    rows = len(column)
    counts = np.bincount(parents, minlength=rows)
    position = np.arange(len(parents)) - (np.cumsum(counts) - counts)[parents]  # index within its row
    first = np.maximum(counts - feature.max_len, 0)[parents]  # the oldest item that still fits
    kept = position >= first
    out = np.zeros((rows, feature.max_len), dtype=np.int64)
    out[parents[kept], (position - first)[kept]] = ids[kept]
    return out


def _encode_categorical(feature: FittedCategorical, column: pa.ChunkedArray) -> np.ndarray:
    strings = _as_strings(column)
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


def _transform(values: np.ndarray, transform: str, clip: tuple[float, float] | None) -> np.ndarray:
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


def _encode_numeric(feature: FittedNumeric, column: pa.ChunkedArray, source: str) -> np.ndarray:
    values = _float_column(pa.table({feature.name: column}), feature.name, source)
    missing = ~np.isfinite(values)
    out = _transform(np.where(missing, 0.0, values), feature.transform, feature.clip)
    if feature.transform == "none":
        out = np.where(missing, feature.mean, out)
    else:  # standardised: the training mean maps to 0
        out = np.where(missing, 0.0, (out - feature.mean) / feature.std)
    columns = [out] + ([missing.astype(np.float64)] if feature.has_missing_flag else [])
    return np.stack(columns, axis=1).astype(np.float32)


def _encode_target(task: Task, table: pa.Table, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Label tensor in label units (a task applies its ``label_transform`` in the loss) and the
    mask of rows whose label is present; invalid labels raise a DataError naming the row."""
    values = _float_column(table, task.label, source)  # type: ignore[arg-type]
    problem = task.label_problem(values)
    if problem:
        raise DataError(f"{source}: label column {task.label!r} of task {task.name!r}, {problem}")
    present = ~np.isnan(values)
    target = torch.from_numpy(np.where(present, values, 0.0)).to(task.target_dtype)
    return target, torch.from_numpy(present)


def _encode_weight(task: Task, table: pa.Table, source: str, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor | None:
    """Row weights: ``weight_column`` × (``positive_weight_column`` on positives, 1 elsewhere)."""
    weight = None
    if task.weight_column:
        weight = _float_column(table, task.weight_column, source, allow_missing=False)
    if task.positive_weight_column:
        name = task.positive_weight_column
        values = _float_column(table, name, source)
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
