"""The features of a schema: their specs (before fitting) and what fitting learns of each.

:class:`CategoricalFeature`, :class:`NumericFeature` and :class:`SequenceFeature` are the config's
feature entries; :class:`FittedCategorical`, :class:`FittedNumeric` and :class:`FittedSequence`
are their fitted states — vocabularies, hash buckets and admitted hashes, scalers — saved in
``schema.json``. :mod:`mtlkit.data.encoding` fits and applies them column by column;
:mod:`mtlkit.data.schema` holds a whole schema.

Example:
    >>> FittedCategorical("city", ["a", "b"]).cardinality   # + the OOV/missing row 0
    3
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mtlkit.data import admission


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


class DienOptions(BaseModel):
    """``pooling: dien`` (Zhou et al., AAAI 2019; :mod:`mtlkit.nn.dien`): the auxiliary loss's weight α
    (Eq. 2; 0 turns it off) and where its negatives come from (the item vocabulary, or other users' histories)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    aux_weight: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    negatives: Literal["vocabulary", "histories"] = "vocabulary"


class SequenceFeature(BaseModel):
    """A multi-valued column pooled into one vector; see the module docstring for the format."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    max_len: int = Field(ge=1)
    pooling: Literal["mean", "sum", "din", "dien"] = "mean"
    target: str | None = None  # din/dien: the categorical feature holding the candidate item
    share_vocabulary_with: str | None = None  # a categorical feature: one vocabulary, one table
    separator: str | None = Field(default=None, min_length=1)  # for delimited string columns
    min_freq: int = Field(default=1, ge=1)
    hash_buckets: int | None = Field(default=None, ge=1)
    normalize: bool = False  # din: softmax over the valid positions (the paper does not normalise)
    attention_hidden: tuple[int, ...] = (36,)  # din: the local activation unit's hidden layers
    dien: DienOptions | None = None  # dien: auxiliary loss weight α and negatives (defaults: α = 1, vocabulary)

    @model_validator(mode="after")
    def _check(self) -> SequenceFeature:
        if (self.pooling in ("din", "dien")) != (self.target is not None):
            raise ValueError(f"sequence {self.name!r}: `target` is required with pooling din or dien and only allowed with them")
        if self.dien is not None and self.pooling != "dien":
            raise ValueError(f"sequence {self.name!r}: `dien` options need pooling dien")
        if self.pooling != "din" and (self.normalize or self.attention_hidden != (36,)):
            raise ValueError(f"sequence {self.name!r}: `normalize`/`attention_hidden` need pooling din")
        if self.share_vocabulary_with and (self.min_freq != 1 or self.hash_buckets):
            raise ValueError(f"sequence {self.name!r}: min_freq/hash_buckets come from {self.share_vocabulary_with!r} when sharing its vocabulary")
        return self


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
    dien: dict | None = None  # DienOptions as a dict (pooling dien)

    @property
    def cardinality(self) -> int:
        """Rows of its own embedding table (0 when it shares a categorical feature's)."""
        if self.share_vocabulary_with:
            return 0
        return 1 + (self.hash_buckets if self.hash_buckets else len(self.vocabulary))

    @property
    def input_key(self) -> str:
        return f"seq:{self.name}"


__all__ = ["CategoricalFeature", "DienOptions", "FittedCategorical", "FittedNumeric", "FittedSequence", "NumericFeature", "SequenceFeature"]
