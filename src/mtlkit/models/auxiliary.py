"""``model.sequence_objectives``: self-supervised auxiliary tasks over behaviour sequences.

Each entry trains one objective of :mod:`mtlkit.nn.sequence_objectives` over a
``features.sequences`` field that shares the candidate item's vocabulary
(``share_vocabulary_with``): ``next_item`` (SASRec-style causal LM), ``masked_item``
(BERT4Rec-style Cloze) — both by sampled softmax over the shared item table — or
``replaced_item`` (ELECTRA-style "should this item be in this sequence?"). Its loss is an
auxiliary task named ``name`` (default ``<objective>:<sequence>``) of loss weight ``weight``:
the balancer weighs it like any task (``train/<name>/loss`` in the logs); it has no validation
metric, so model selection reads the labelled tasks only.

Example:
    >>> spec = SequenceObjectiveSpec(sequence="hist_items", objective="masked_item", weight=0.5)
    >>> spec.task_name, spec.mask_rate
    ('masked_item:hist_items', 0.2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mtlkit.data.schema import FittedSchema
from mtlkit.errors import ConfigError
from mtlkit.nn import ObjectiveField


class SequenceObjectiveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sequence: str
    objective: Literal["next_item", "masked_item", "replaced_item"] = "next_item"
    name: str | None = None
    weight: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    negatives: int = Field(default=64, ge=1)  # sampled-softmax negatives (next_item, masked_item)
    mask_rate: float = Field(default=0.2, gt=0.0, lt=1.0)  # masked_item / replaced_item: fraction of valid positions
    layers: int = Field(default=1, ge=1)
    heads: int = Field(default=1, ge=1)

    @property
    def task_name(self) -> str:
        return self.name or f"{self.objective}:{self.sequence}"


def objective_fields(specs: Sequence[SequenceObjectiveSpec], schema: FittedSchema, embedding_dim: int,
                     task_names: Sequence[str]) -> list[ObjectiveField]:
    """The encoder's objective fields; a ConfigError names ``model.sequence_objectives[i]`` on bad input."""
    index = {s.name: i for i, s in enumerate(schema.sequences)}
    taken = set(task_names) | {f"dien:{s.name}" for s in schema.sequences if s.pooling == "dien"}
    fields = []
    for i, spec in enumerate(specs):
        key = f"model.sequence_objectives[{i}]"
        if spec.sequence not in index:
            known = ", ".join(index) or "none"
            raise ConfigError(f"{key}.sequence: {spec.sequence!r} is not a features.sequences field (sequences: {known})")
        if not schema.sequences[index[spec.sequence]].share_vocabulary_with:
            raise ConfigError(f"{key}.sequence: {spec.sequence!r} does not share the item vocabulary: set its "
                              "share_vocabulary_with to the candidate item's categorical feature")
        if embedding_dim % spec.heads:
            raise ConfigError(f"{key}.heads: {spec.heads} does not divide model.embedding_dim={embedding_dim}")
        if spec.task_name in taken:
            raise ConfigError(f"{key}.name: {spec.task_name!r} is already a task name")
        taken.add(spec.task_name)
        fields.append(ObjectiveField(spec.task_name, index[spec.sequence], spec.objective, spec.weight, spec.negatives,
                                     spec.mask_rate, spec.layers, spec.heads))
    return fields


__all__ = ["SequenceObjectiveSpec", "objective_fields"]
