"""Optimisers for embedding tables (row-wise AdaGrad, lazy Adam, SGD; a registry), the split of a
model's parameters into tables and dense parameters, and sparse-aware gradient clipping.

``TABLE_OPTIMIZERS`` maps a name to a :class:`~mtlkit.optim.base.TableOptimizer`; one file and
one registry line add one (import it here).
"""

from mtlkit.optim import (
    lazy_adam,
    rowwise_adagrad,
    sgd,
)
from mtlkit.optim.base import TABLE_OPTIMIZERS, TableOptimizer, TableOptimizerOptions, touched_rows
from mtlkit.optim.build import OptimizerSet, SchedulerSet, build_optimizers, build_table_optimizers, table_field_names
from mtlkit.optim.clip import clip_grad_norm_, grad_norm
from mtlkit.optim.lazy_adam import LazyAdam
from mtlkit.optim.rowwise_adagrad import RowWiseAdagrad
from mtlkit.optim.sgd import RowSGD
from mtlkit.optim.spec import EmbeddingOptimizerSpec, FieldOptimizerSpec, check_fields

__all__ = [
    "TABLE_OPTIMIZERS", "EmbeddingOptimizerSpec", "FieldOptimizerSpec", "LazyAdam", "OptimizerSet", "RowSGD",
    "RowWiseAdagrad", "SchedulerSet", "TableOptimizer", "TableOptimizerOptions", "build_optimizers",
    "build_table_optimizers", "check_fields", "clip_grad_norm_", "grad_norm", "table_field_names", "touched_rows",
]
