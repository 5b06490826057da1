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

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mtlkit.data.schema import FittedSchema
from mtlkit.errors import ConfigError
from mtlkit.models.auxiliary import SequenceObjectiveSpec, objective_fields
from mtlkit.models.base import BACKBONES, BackboneOptions
from mtlkit.models.fusion import FusionSpec
from mtlkit.models.layout import InputLayout
from mtlkit.models.multitask import IndependentTaskModels, MultiTaskModel
from mtlkit.models.relations import TaskRelations
from mtlkit.models.shallow_tower import ShallowTower, ShallowTowerSpec
from mtlkit.nn import EMBEDDING_TABLES, TabularEncoder
from mtlkit.nn.embedding_tables import embedding_tables
from mtlkit.optim.build import table_field_names
from mtlkit.optim.rounding import STORAGE_DTYPES
from mtlkit.optim.spec import AUTO, AUTO_SPARSE_ROWS, EmbeddingOptimizerSpec, check_fields
from mtlkit.protocols import TrainableModel
from mtlkit.tasks import Task, TaskKind


class ModelSpec(BaseModel):
    """Which backbone, its options, the embedding width, the per-task towers, and how tasks relate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backbone: str = "shared_bottom"
    options: dict[str, Any] = Field(default_factory=dict)
    embedding_dim: int = Field(default=8, ge=1)
    embedding_table: str = "fused"  # a backend of mtlkit.nn.embedding_tables: fused | per_field | a registered one
    # how the tables train: auto (row-wise AdaGrad on the rows a batch touched for tables over 50k rows,
    # else dense), rowwise_adagrad, lazy_adam, sgd or dense (mtlkit.optim.spec)
    embedding_optimizer: EmbeddingOptimizerSpec = Field(default_factory=lambda: EmbeddingOptimizerSpec(name=AUTO))
    # the tables' weights: float32, or bfloat16 (half the memory; needs a row-wise table optimiser,
    # which updates in fp32 and rounds back stochastically: mtlkit.optim.rounding)
    embedding_storage: Literal["float32", "bfloat16"] = "float32"
    tower: list[int] = Field(default_factory=list)
    tower_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    relations: TaskRelations = Field(default_factory=TaskRelations)
    shallow_tower: ShallowTowerSpec | None = None
    fusion: FusionSpec | None = None
    #: A categorical feature naming each row's scenario (country, device): STAR's scenario-specific
    #: weights read it, and ``mtlkit evaluate`` reports metrics per scenario. Id 0 (a value unseen in
    #: training) gets the shared weights only.
    scenario: str | None = None
    #: BatchNorm after each hidden linear layer of the task towers (torch-rechub's census setting).
    tower_batch_norm: bool = False
    sequence_objectives: list[SequenceObjectiveSpec] = Field(default_factory=list)  # self-supervised auxiliary tasks (models/auxiliary.py)

    @model_validator(mode="after")
    def _check_backbone(self) -> ModelSpec:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of: {', '.join(BACKBONES.names())}")
        if self.embedding_table not in EMBEDDING_TABLES:
            raise ValueError(f"unknown embedding_table {self.embedding_table!r}; choose one of: {', '.join(EMBEDDING_TABLES.names())}")
        self.backbone_options()  # raises a ValidationError naming the bad option
        if self.relations.any() and BACKBONES.get(self.backbone).independent_tasks:
            raise ValueError(f"relations need a shared model; backbone {self.backbone!r} trains every task alone")
        return self

    def backbone_options(self) -> BackboneOptions:
        return BACKBONES.get(self.backbone).Options(**self.options)


def input_layout(spec: ModelSpec, schema: FittedSchema, n_tasks: int) -> InputLayout:
    """Where each feature sits in the encoder's output for ``spec``'s backbone (see :mod:`mtlkit.models.layout`)."""
    copies = BACKBONES.get(spec.backbone).embedding_copies(spec.backbone_options(), n_tasks)
    layout = InputLayout([f.name for f in schema.categorical], schema.cardinalities, spec.embedding_dim,
                         schema.numeric_dim, len(schema.sequences), copies, spec.scenario)
    if spec.scenario is not None:
        layout.index(spec.scenario, "model.scenario")
    return layout


def _check_spec(spec: ModelSpec, schema: FittedSchema, tasks: Sequence[Task]) -> None:
    """What the spec says about tasks and features must match them; ConfigError names the key."""
    names = {t.name: t for t in tasks}
    check_fields(spec.embedding_optimizer, table_field_names(schema))
    input_layout(spec, schema, len(tasks))
    try:
        spec.relations.check(tasks)
    except ValueError as error:
        raise ConfigError(f"model.{error}") from None
    if spec.shallow_tower is not None:
        derived = spec.relations.derived()
        for name in spec.shallow_tower.tasks or []:
            if name not in names:
                raise ConfigError(f"model.shallow_tower.tasks: unknown task {name!r}; tasks are: {', '.join(names)}")
            if name in derived:
                raise ConfigError(f"model.shallow_tower.tasks: {name!r} is an ESMM product; its bias comes through its factors")
        if not schema.bias_cardinalities:
            raise ConfigError("model.shallow_tower needs bias features: list them under features.bias (e.g. position, device)")
    for seq in schema.sequences:
        if seq.pooling == "dien" and f"dien:{seq.name}" in names:
            raise ConfigError(f"tasks: {f'dien:{seq.name}'!r} is the name of sequence {seq.name!r}'s DIEN auxiliary task; rename the task")
    if spec.fusion is not None:
        for name in spec.fusion.weights:
            if name not in names:
                raise ConfigError(f"model.fusion.weights: unknown task {name!r}; tasks are: {', '.join(names)}")
            if names[name].kind is TaskKind.MULTICLASS:
                raise ConfigError(f"model.fusion.weights: task {name!r} is multiclass and has no scalar prediction")


def _check_storage(spec: ModelSpec, model: nn.Module) -> None:
    """Reduced-precision tables need a row-wise table optimiser: a dense optimiser would add its
    updates in bf16, rounding to nearest, and lose every step under 2⁻⁹ of a weight. ``auto`` is
    resolved as :func:`mtlkit.optim.build_table_optimizers` resolves it, on all the model's tables."""
    weights = {id(r.weight): r.weight for table in embedding_tables(model) for r in table.field_rows()}
    rows = sum(w.shape[0] for w in weights.values())
    if spec.embedding_optimizer.for_rows(rows).dense:
        why = ("'auto' picks dense Adam for tables of at most "
               f"{AUTO_SPARSE_ROWS:,} rows (these have {rows:,})") if spec.embedding_optimizer.name == AUTO else "it is 'dense'"
        raise ConfigError(f"model.embedding_storage: {spec.embedding_storage} tables need a row-wise table optimizer, "
                          f"and model.embedding_optimizer does not give one ({why}); name one, e.g. {{name: rowwise_adagrad}}")


def build_model(spec: ModelSpec, schema: FittedSchema, tasks: Sequence[Task]) -> TrainableModel:
    _check_spec(spec, schema, tasks)
    backbone_cls = BACKBONES.get(spec.backbone)
    options = spec.backbone_options()
    derived = spec.relations.derived()
    default_biased = [t.name for t in tasks if t.kind is TaskKind.BINARY and t.name not in derived]
    objectives = objective_fields(spec.sequence_objectives, schema, spec.embedding_dim, [t.name for t in tasks])

    def assemble(model_tasks: Sequence[Task]) -> MultiTaskModel:
        layout = input_layout(spec, schema, len(model_tasks))
        encoder = TabularEncoder.from_schema(schema, spec.embedding_dim, spec.embedding_table, layout.copies, objectives,
                                             STORAGE_DTYPES[spec.embedding_storage])
        backbone = backbone_cls.create(encoder.output_dim, [t.name for t in model_tasks], options, layout)
        shallow = None
        if spec.shallow_tower is not None:
            wanted = spec.shallow_tower.tasks if spec.shallow_tower.tasks is not None else default_biased
            biased = [t.name for t in model_tasks if t.name in wanted]
            if biased:
                shallow = ShallowTower(schema.bias_cardinalities, biased, spec.shallow_tower)
        return MultiTaskModel(encoder, backbone, model_tasks, spec.tower, spec.tower_dropout,
                              spec.relations, shallow, spec.fusion, spec.tower_batch_norm)

    model = IndependentTaskModels({t.name: assemble([t]) for t in tasks}, spec.fusion) if backbone_cls.independent_tasks else assemble(tasks)
    if spec.embedding_storage != "float32":
        _check_storage(spec, model)
    return model
