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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mtlkit.data.batch import EncodedTable
from mtlkit.data.encoding import (
    encode_categorical,
    encode_numeric,
    encode_sequence,
    encode_target,
    encode_weight,
    fit_categorical,
    fit_numeric,
    fit_sequence,
    float_column,
    require_columns,
    sequence_items,
)
from mtlkit.data.features import (
    CategoricalFeature,
    FittedCategorical,
    FittedNumeric,
    FittedSequence,
    NumericFeature,
    SequenceFeature,
)
from mtlkit.data.tables import TableLike, as_arrow
from mtlkit.errors import DataError
from mtlkit.outputs import write_text
from mtlkit.tasks import Task

SCHEMA_FORMAT_VERSION = 1


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
        return [*self.feature_names, *(f.name for f in self.bias)]

    @field_validator("bias", mode="before")
    @classmethod
    def _bias_names(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @property
    def feature_names(self) -> list[str]:
        """The categorical, numeric and sequence features' columns, in that order."""
        return [f.name for f in self.categorical] + [f.name for f in self.numeric] + [s.name for s in self.sequences]

    @model_validator(mode="after")
    def _check_references(self) -> SchemaSpec:
        names = self.feature_names
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
        require_columns(train, [*self.feature_names, *(f.name for f in self.bias)], source)
        if not self.categorical and not self.numeric and not self.sequences:
            raise DataError("the schema has no features: list categorical, numeric and/or sequence columns")
        items = {s.name: sequence_items(s.name, s.separator, train.column(s.name), source)[1] for s in self.sequences}
        shared: dict[str, list[pa.Array]] = {}
        for seq in self.sequences:
            if seq.share_vocabulary_with:
                shared.setdefault(seq.share_vocabulary_with, []).append(items[seq.name])
        return FittedSchema(
            categorical=[fit_categorical(f, train.column(f.name), shared.get(f.name, ())) for f in self.categorical],
            numeric=[fit_numeric(f, train.column(f.name), source) for f in self.numeric],
            sequences=[fit_sequence(s, items[s.name]) for s in self.sequences],
            bias=[fit_categorical(f, train.column(f.name)) for f in self.bias],
        )


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
        return [f.name for f in self.categorical] + [f.name for f in self.numeric] + [s.name for s in self.sequences]

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
        require_columns(table, self.feature_columns, source)
        serving = not with_targets if serving is None else serving
        inputs: dict[str, torch.Tensor] = {}
        if self.categorical:
            ids = np.stack([encode_categorical(f, table.column(f.name)) for f in self.categorical], axis=1)
            inputs["categorical"] = torch.from_numpy(ids)
        if self.numeric:
            dense = np.concatenate([encode_numeric(f, table.column(f.name), source) for f in self.numeric], axis=1)
            inputs["numeric"] = torch.from_numpy(dense)
        by_name = {f.name: f for f in self.categorical}
        for seq in self.sequences:
            vocabulary = by_name[seq.share_vocabulary_with] if seq.share_vocabulary_with else seq
            inputs[seq.input_key] = torch.from_numpy(encode_sequence(seq, vocabulary, table.column(seq.name), source))
        if self.bias:
            if serving:
                inputs["bias"] = torch.zeros(table.num_rows, len(self.bias), dtype=torch.long)
            else:
                require_columns(table, [f.name for f in self.bias], f"{source} (bias features; encode with serving=True to leave them out)")
                inputs["bias"] = torch.from_numpy(np.stack([encode_categorical(f, table.column(f.name)) for f in self.bias], axis=1))
        if not with_targets:
            return EncodedTable(inputs=inputs, targets={}, masks={})
        targets, masks, weights, extras = {}, {}, {}, {}
        for task in tasks:
            targets[task.name], masks[task.name] = encode_target(task, table, source)
            weight = encode_weight(task, table, source, targets[task.name], masks[task.name])
            if weight is not None:
                weights[task.name] = weight
            if task.mask:
                in_space = float_column(table, task.mask.column, source) == task.mask.equals
                masks[task.name] &= torch.from_numpy(in_space)
            if task.group_column and task.group_column not in extras:
                require_columns(table, [task.group_column], source)
                groups = pc.dictionary_encode(table.column(task.group_column).combine_chunks())
                extras[task.group_column] = torch.from_numpy(groups.indices.to_numpy(zero_copy_only=False).astype(np.int64))
        group_ids = {t.name: extras[t.group_column] for t in tasks if t.needs_groups and t.group_column}  # batches carry them
        return EncodedTable(inputs=inputs, targets=targets, masks=masks, weights=weights, extras=extras, groups=group_ids)

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


__all__ = ["SCHEMA_FORMAT_VERSION", "CategoricalFeature", "FittedCategorical", "FittedNumeric", "FittedSchema", "FittedSequence",
           "NumericFeature", "SchemaSpec", "SequenceFeature"]
