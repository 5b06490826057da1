"""Split a model's parameters into embedding tables and dense parameters; build their optimisers.

:func:`build_table_optimizers` switches the model's tables (:mod:`mtlkit.nn.embedding_tables`)
to sparse gradients and returns their row-wise optimisers, one per distinct setting: fields of
one fused weight with the same settings share one optimiser; a field with settings of its own
gets an optimiser restricted to its row range (``rows=(start, stop)``, see
:mod:`mtlkit.optim.base`). With ``name: dense`` the tables keep dense gradients and no table
optimiser is built: they join the dense parameters (today's behaviour).

:class:`OptimizerSet` steps, zeroes and saves the dense optimiser and the table optimisers as one
(``state_dict() == {"dense": …, "tables": [...]}``); :meth:`OptimizerSet.schedulers` gives one
``LambdaLR`` per optimiser with the same schedule. :func:`build_optimizers` is the whole recipe
(the dense part is the trainer's default: fused Adam/AdamW, no decay on 1-D parameters).

Example:
    >>> import torch
    >>> from mtlkit.nn import TabularEncoder
    >>> from mtlkit.optim.spec import EmbeddingOptimizerSpec
    >>> encoder = TabularEncoder([1000, 3], numeric_dim=1, embedding_dim=4)
    >>> spec = EmbeddingOptimizerSpec(per_field={"device": {"name": "sgd"}})
    >>> opt = build_optimizers(encoder, spec, lr=1e-3, field_names=["user_id", "device"])
    >>> [(type(o).__name__, o.param_groups[0]["rows"]) for o in opt.tables]
    [('RowWiseAdagrad', (0, 1000)), ('RowSGD', (1000, 1003))]
    >>> x = encoder({"categorical": torch.tensor([[7, 2]]), "numeric": torch.zeros(1, 1)})
    >>> x.sum().backward()
    >>> encoder.embedding.table.weight.grad.is_sparse
    True
    >>> opt.step(); opt.zero_grad()
    >>> sorted(opt.state_dict())
    ['dense', 'tables']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mtlkit.errors import ConfigError
from mtlkit.nn.embedding_tables import embedding_tables
from mtlkit.optim.base import TABLE_OPTIMIZERS, TableOptimizer, TableOptimizerOptions
from mtlkit.optim.spec import KEY, EmbeddingOptimizerSpec


def table_field_names(schema: Any) -> list[str]:
    """The field names of a schema's table, in table order: the categorical features, then the
    sequence features with a vocabulary of their own (what ``per_field`` keys may name). Works on
    a ``SchemaSpec`` (before fitting: check the config) and on a ``FittedSchema``."""
    return [f.name for f in schema.categorical] + [s.name for s in schema.sequences if not s.share_vocabulary_with]


def build_table_optimizers(model: nn.Module, spec: EmbeddingOptimizerSpec,
                           field_names: Sequence[str] | None = None) -> list[TableOptimizer]:
    """Set the tables' gradient mode from ``spec`` and return their optimisers (none for ``dense``;
    ``auto`` resolved by the tables' total row count)."""
    tables = embedding_tables(model)
    weights = {id(r.weight): r.weight for table in tables for r in table.field_rows()}
    spec = spec.for_rows(sum(w.shape[0] for w in weights.values()))
    for table in tables:
        table.set_sparse_gradients(not spec.dense)
    if spec.dense:
        return []
    if spec.per_field and field_names is None:
        raise ConfigError(f"{KEY}.per_field: the field names of the tables are needed to apply it")
    if not spec.per_field:  # names only place per-field settings (a table may hold copies of a field: STEM)
        field_names = None
    # (weight, start, stop, settings) per run of consecutive fields with equal settings.
    segments: list[tuple[nn.Parameter, int, int, tuple[str, TableOptimizerOptions]]] = []
    for table in tables:
        rows = table.field_rows()
        if field_names is not None and len(field_names) != len(rows):
            raise ConfigError(f"{KEY}: a table has {len(rows)} fields, but {len(field_names)} field names were given")
        for f, (weight, start, stop) in enumerate(rows):
            if not weight.requires_grad:
                continue
            name, options = spec.resolve(field_names[f] if field_names is not None else None)
            settings = (name, TABLE_OPTIMIZERS.get(name).Options(**options))
            last = segments[-1] if segments else None
            if last is not None and last[0] is weight and last[2] == start and last[3] == settings:
                segments[-1] = (weight, last[1], stop, settings)
            else:
                segments.append((weight, start, stop, settings))
    per_weight: dict[int, int] = {}
    for weight, *_ in segments:
        per_weight[id(weight)] = per_weight.get(id(weight), 0) + 1
    whole: dict[tuple[str, TableOptimizerOptions], list[nn.Parameter]] = {}
    optimizers: list[TableOptimizer] = []
    for weight, start, stop, settings in segments:
        name, table_options = settings
        if per_weight[id(weight)] == 1 and (start, stop) == (0, weight.shape[0]):
            whole.setdefault(settings, []).append(weight)  # one optimiser for every weight with these settings
        else:
            optimizers.append(TABLE_OPTIMIZERS.get(name)([weight], rows=(start, stop), **table_options.model_dump()))
    shared = [TABLE_OPTIMIZERS.get(name)(weights, **options.model_dump()) for (name, options), weights in whole.items()]
    return shared + optimizers


class SchedulerSet:
    """One ``LambdaLR`` per optimiser of an :class:`OptimizerSet`, stepped and saved together."""

    def __init__(self, optimizers: Sequence[Optimizer], factor: Callable[[int], float]) -> None:
        self.schedulers = [LambdaLR(o, factor) for o in optimizers]

    def step(self) -> None:
        for s in self.schedulers:
            s.step()

    def get_last_lr(self) -> list[float | Tensor]:  # as LambdaLR.get_last_lr
        return self.schedulers[0].get_last_lr()

    def state_dict(self) -> list[dict[str, Any]]:
        return [s.state_dict() for s in self.schedulers]

    def load_state_dict(self, state: Any) -> None:
        states = state if isinstance(state, list) else [state] * len(self.schedulers)  # an older single-scheduler checkpoint
        if len(states) != len(self.schedulers):
            raise ConfigError(f"the checkpoint has {len(states)} learning-rate schedules, this configuration {len(self.schedulers)}")
        for s, st in zip(self.schedulers, states):
            s.load_state_dict(st)


class OptimizerSet:
    """The dense optimiser and the table optimisers of one model (see the module docstring)."""

    def __init__(self, dense: Optimizer | None, tables: Sequence[TableOptimizer] = ()) -> None:
        self.dense = dense
        self.tables = list(tables)

    @property
    def optimizers(self) -> list[Optimizer]:
        return ([self.dense] if self.dense is not None else []) + list(self.tables)

    @property
    def table_parameters(self) -> list[nn.Parameter]:
        """The table weights (each once): their gradients are sparse; leave them out of dense reductions."""
        seen: dict[int, nn.Parameter] = {}
        for opt in self.tables:
            for group in opt.param_groups:
                for p in group["params"]:
                    seen.setdefault(id(p), p)
        return list(seen.values())

    @property
    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for g in self.dense.param_groups for p in g["params"]] if self.dense is not None else []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def schedulers(self, factor: Callable[[int], float]) -> SchedulerSet:
        return SchedulerSet(self.optimizers, factor)

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict() if self.dense is not None else None,
                "tables": [opt.state_dict() for opt in self.tables]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "tables" not in state:  # a checkpoint of the dense optimiser alone (before table optimisers)
            if self.tables or self.dense is None:
                raise ConfigError("the checkpoint has no embedding-table optimizer state, but this configuration trains "
                                  "the tables with one (model.embedding_optimizer); resume with name: dense")
            self.dense.load_state_dict(state)
            return
        if len(state["tables"]) != len(self.tables):
            raise ConfigError(f"the checkpoint has {len(state['tables'])} embedding-table optimizers, this configuration "
                              f"builds {len(self.tables)} (model.embedding_optimizer changed?)")
        if self.dense is not None and state["dense"] is not None:
            self.dense.load_state_dict(state["dense"])
        for opt, st in zip(self.tables, state["tables"]):
            opt.load_state_dict(st)


def build_optimizers(model: nn.Module, spec: EmbeddingOptimizerSpec, *, lr: float = 1e-3, weight_decay: float = 0.0,
                     optimizer: str = "adam", field_names: Sequence[str] | None = None,
                     extra_parameters: Iterable[nn.Parameter] = ()) -> OptimizerSet:
    """The table optimisers of ``spec`` and a fused Adam/AdamW over every other trainable parameter
    (decay on ≥ 2-D parameters only; ``extra_parameters``, e.g. a balancer's, never decayed)."""
    tables = build_table_optimizers(model, spec, field_names)
    table_ids = {id(p) for opt in tables for g in opt.param_groups for p in g["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in table_ids]
    groups = ([{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
               {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}] if weight_decay
              else [{"params": params, "weight_decay": 0.0}])
    extra = [p for p in extra_parameters if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    dense = cls(groups, lr=lr, fused=True) if groups else None
    return OptimizerSet(dense, tables)


__all__ = ["OptimizerSet", "SchedulerSet", "build_optimizers", "build_table_optimizers", "table_field_names"]
