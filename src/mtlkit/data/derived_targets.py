"""Distribution targets computed by mtlkit, leakage-safe (``data.derived_targets``).

"Predict the data's own distribution" as an auxiliary task — how often this user clicks this
category, how popular this item is — without computing the label by hand, which easily leaks the
future. Each entry adds one column to every split, which a task then names as its ``label``:

- ``kind: rate``: the smoothed rate of the 0/1 behaviour ``of`` within the group ``by``
  (e.g. ``[user_id, category]``), ``(Σ y + prior · r̄) / (n + prior)`` over the counted rows,
  ``r̄`` the training rate (without the row itself, for training rows; a group with no history gets ``r̄``);
- ``kind: popularity``: ``log1p(n)``, the number of counted rows of the group ``by`` (e.g. ``[item_id]``).

The counted rows are always **training rows only** — validation and test labels never enter any
split's target — and

- with ``time``: only training rows **strictly earlier** than the row (ties excluded), the causal
  statistic an online system has at that moment;
- with ``training_only: true`` and no time column: the whole training split, the row's own label
  left out for training rows (leave-one-out).

One of the two is required (a one-line ConfigError naming the key otherwise): a statistic over
all rows would let the auxiliary task learn from validation, test or future labels.

Example:
    >>> import pyarrow as pa
    >>> train = pa.table({"u": ["a", "a", "a", "b"], "t": [1, 2, 2, 1], "click": [1, 0, 1, 1]})
    >>> spec = DerivedTarget(name="u_ctr", kind="rate", by=["u"], of="click", time="t", prior=0.0)
    >>> [round(v, 3) for v in add_derived_targets({"train": train}, [spec])["train"]["u_ctr"].to_pylist()]
    [0.667, 1.0, 1.0, 0.667]

(strictly earlier rows only: the two rows at t = 2 see the one at t = 1, not each other; rows
without history get the training rate of the other rows.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mtlkit.errors import ConfigError, DataError


class DerivedTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: Literal["rate", "popularity"]
    by: list[str] = Field(min_length=1)
    of: str | None = None  # rate: the 0/1 behaviour column
    time: str | None = None  # count only training rows strictly earlier than the row
    training_only: bool = False  # no time column: the training split's statistic, leave-one-out on training rows
    prior: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)  # rate: pseudo-rows at the training rate

    @model_validator(mode="after")
    def _check(self) -> DerivedTarget:
        if (self.kind == "rate") != (self.of is not None):
            raise ValueError(f"derived target {self.name!r}: `of` (the 0/1 behaviour column) is required with kind rate and only allowed with it")
        if self.time is None and not self.training_only:
            raise ValueError(f"derived target {self.name!r}: give `time` (count strictly earlier rows) or `training_only: true` "
                             "(the training split's statistic); a statistic over all rows leaks validation, test and future labels")
        return self

    def columns(self) -> list[str]:
        return [*self.by, *([self.of] if self.of else []), *([self.time] if self.time else [])]


def _keys(tables: Sequence[pa.Table], by: Sequence[str]) -> list[np.ndarray]:
    """Group codes shared by all tables (nulls are a group of their own)."""
    joined = []
    for table in tables:
        parts = [pc.fill_null(pc.cast(table.column(c), pa.string()), "\x00") for c in by]
        joined.append(pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0])
    codes = pc.dictionary_encode(pa.chunked_array([c for j in joined for c in pa.chunked_array(j).chunks], type=pa.string()))
    flat = np.concatenate([np.asarray(chunk.indices) for chunk in codes.chunks]) if codes.num_chunks else np.zeros(0, np.int64)
    sizes = np.cumsum([0, *(t.num_rows for t in tables)])
    return [flat[a:b].astype(np.int64) for a, b in zip(sizes[:-1], sizes[1:])]


def _floats(table: pa.Table, column: str, source: str) -> np.ndarray:
    values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    if np.isnan(values).any():
        raise DataError(f"{source}: column {column!r} has missing values; a derived target needs it complete")
    return values


def _earlier_totals(train_key: np.ndarray, train_time: np.ndarray, train_y: np.ndarray, key: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ y and n over training rows of the same group with a strictly smaller time, for each query row."""
    _, ranks = np.unique(np.concatenate([train_time, time]), return_inverse=True)  # exact integer times
    train_rank, rank = ranks[: len(train_time)].astype(np.int64), ranks[len(train_time):].astype(np.int64)
    order = np.lexsort((train_rank, train_key))
    k, y = train_key[order], train_y[order]
    sums, counts = np.cumsum(y), np.arange(1, len(k) + 1, dtype=np.float64)
    # the last training row with (key, time) < (query key, query time), lexicographically
    width = int(ranks.max(initial=0)) + 1
    last = np.searchsorted(k * width + train_rank[order], key * width + rank, side="left") - 1
    start = np.searchsorted(k, key, side="left") - 1  # the row before the group's first
    same = (last >= 0) & (last > start)
    before_sum = np.where(start >= 0, sums[np.maximum(start, 0)], 0.0)
    before_count = np.where(start >= 0, counts[np.maximum(start, 0)], 0.0)
    total = np.where(same, sums[np.maximum(last, 0)] - before_sum, 0.0)
    count = np.where(same, counts[np.maximum(last, 0)] - before_count, 0.0)
    return total, count


def add_derived_targets(tables: Mapping[str, pa.Table | None], specs: Sequence[DerivedTarget],
                        names: Mapping[str, str] | None = None) -> dict[str, pa.Table | None]:
    """Each split with the ``specs``' columns appended, computed from the ``"train"`` split only."""
    names = names or {}
    out = dict(tables)
    train = tables["train"]
    assert train is not None
    splits = [s for s, t in tables.items() if t is not None]
    for i, spec in enumerate(specs):
        for split in splits:
            table = out[split]
            assert table is not None
            missing = [c for c in spec.columns() if c not in table.column_names]
            if missing:
                raise DataError(f"{names.get(split, split)}: missing column {missing[0]!r} (data.derived_targets[{i}] {spec.name!r})")
            if spec.name in table.column_names:
                raise ConfigError(f"data.derived_targets[{i}].name: {spec.name!r} is already a column of {names.get(split, split)}")
        keys = dict(zip(splits, _keys([tables[s] for s in splits], spec.by)))
        train_y = _floats(train, spec.of, names.get("train", "train")) if spec.of else np.ones(train.num_rows)
        if spec.of and not np.isin(train_y, (0.0, 1.0)).all():
            raise DataError(f"{names.get('train', 'train')}: column {spec.of!r} of data.derived_targets[{i}] must hold 0/1 values")
        for split in splits:
            table = out[split]
            assert table is not None
            if spec.time is not None:
                total, count = _earlier_totals(keys["train"], _floats(train, spec.time, names.get("train", "train")), train_y,
                                               keys[split], _floats(table, spec.time, names.get(split, split)))
            else:
                size = int(max(k.max(initial=-1) for k in keys.values())) + 1
                sums = np.bincount(keys["train"], weights=train_y, minlength=size)
                ns = np.bincount(keys["train"], minlength=size).astype(np.float64)
                total, count = sums[keys[split]], ns[keys[split]]
                if split == "train":  # leave-one-out: a row's own label never enters its target
                    total, count = total - train_y, count - 1.0
            if spec.kind == "rate":
                if split == "train" and len(train_y) > 1:  # the prior's rate without the row's own label either
                    mean = (train_y.sum() - train_y) / (len(train_y) - 1)
                else:
                    mean = float(train_y.mean()) if len(train_y) else 0.0
                denominator = count + spec.prior
                value = np.where(denominator > 0, (total + spec.prior * mean) / np.where(denominator > 0, denominator, 1.0), mean)
            else:
                value = np.log1p(count)
            out[split] = table.append_column(spec.name, pa.array(value.astype(np.float32)))
    return out


__all__ = ["DerivedTarget", "add_derived_targets"]
