"""Build a model from a validated spec, the fitted schema and the tasks.

Example:
    >>> import pyarrow as pa
    >>> from mtlkit.data.schema import SchemaSpec, NumericFeature
    >>> from mtlkit.tasks import Task
    >>> schema = SchemaSpec(numeric=[NumericFeature(name="x")]).fit(pa.table({"x": [1.0, 2.0]}))
    >>> tasks = [Task(name="a", kind="binary"), Task(name="b", kind="regression")]
    >>> model = build_model(ModelSpec(backbone="single_task", options={"hidden": [4]}), schema, tasks)
    >>> sorted(model.per_task)
    ['a', 'b']
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mtlkit.data.schema import FittedSchema
from mtlkit.models.base import BACKBONES, BackboneOptions
from mtlkit.models.multitask import IndependentTaskModels, MultiTaskModel
from mtlkit.nn import TabularEncoder
from mtlkit.tasks import Task


class ModelSpec(BaseModel):
    """Which backbone, its options, the embedding width and the per-task towers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backbone: str = "shared_bottom"
    options: dict[str, Any] = Field(default_factory=dict)
    embedding_dim: int = Field(default=8, ge=1)
    tower: list[int] = Field(default_factory=list)
    tower_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check_backbone(self) -> "ModelSpec":
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of: {', '.join(BACKBONES.names())}")
        self.backbone_options()  # raises a ValidationError naming the bad option
        return self

    def backbone_options(self) -> BackboneOptions:
        return BACKBONES.get(self.backbone).Options(**self.options)


def build_model(spec: ModelSpec, schema: FittedSchema, tasks: Sequence[Task]) -> nn.Module:
    backbone_cls = BACKBONES.get(spec.backbone)
    options = spec.backbone_options()

    def assemble(model_tasks: Sequence[Task]) -> MultiTaskModel:
        encoder = TabularEncoder(schema.cardinalities, schema.numeric_dim, spec.embedding_dim)
        backbone = backbone_cls(encoder.output_dim, [t.name for t in model_tasks], options)
        return MultiTaskModel(encoder, backbone, model_tasks, spec.tower, spec.tower_dropout)

    if backbone_cls.independent_tasks:
        return IndependentTaskModels({t.name: assemble([t]) for t in tasks})
    return assemble(tasks)
