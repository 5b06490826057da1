"""What one objective is: its label, kind, loss, weighting, task-space mask and metrics.

A :class:`Task` knows nothing about the model or the balancer. It turns logits into a masked,
weighted scalar loss and into predictions, and it checks that a label column holds values it
can learn from.

Example:
    >>> import torch
    >>> ctr = Task(name="click", kind="binary")
    >>> cvr = Task(name="buy", kind="binary", mask=TaskMask(column="click"))
    >>> cvr.metrics, cvr.loss
    (['auc', 'logloss'], 'bce')
    >>> logits = torch.tensor([0.0, 2.0, -1.0])
    >>> labels = torch.tensor([1.0, 1.0, 0.0])
    >>> in_space = torch.tensor([True, False, False])   # only the first row was clicked
    >>> round(cvr.compute_loss(logits, labels, mask=in_space).item(), 4)
    0.6931
"""

from __future__ import annotations

from enum import Enum
from typing import Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from mtlkit.losses import LOSSES, get_loss
from mtlkit.metrics import METRICS


class TaskKind(str, Enum):
    BINARY = "binary"
    REGRESSION = "regression"
    MULTICLASS = "multiclass"


DEFAULT_LOSS = {TaskKind.BINARY: "bce", TaskKind.REGRESSION: "mse", TaskKind.MULTICLASS: "cross_entropy"}
DEFAULT_METRICS = {
    TaskKind.BINARY: ["auc", "logloss"],
    TaskKind.REGRESSION: ["rmse", "mae"],
    TaskKind.MULTICLASS: ["accuracy", "logloss"],
}
LOSS_KINDS = {
    "bce": {TaskKind.BINARY},
    "mse": {TaskKind.REGRESSION},
    "huber": {TaskKind.REGRESSION},
    "cross_entropy": {TaskKind.MULTICLASS},
}


class TaskMask(BaseModel):
    """Task-space mask: the task trains and is evaluated only on rows where ``column == equals``.

    ESMM's conversion-rate space is ``TaskMask(column="click", equals=1)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str
    equals: float = 1.0


class Task(BaseModel):
    """One objective of the multi-task model.

    ``loss_weight`` scales this task's loss in the fixed-weight sum. Rows whose label is missing,
    whose ``weight_column`` is zero, or which fall outside ``mask`` contribute neither loss nor
    metric. The loss is the weighted mean over the rows that count; a batch with none of them
    gives a loss of exactly zero (and zero gradient), never NaN.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    kind: TaskKind
    label: Optional[str] = None
    n_classes: Optional[int] = Field(default=None, ge=2)
    loss: Optional[str] = None
    loss_weight: float = Field(default=1.0, ge=0.0)
    weight_column: Optional[str] = None
    mask: Optional[TaskMask] = None
    metrics: Optional[list[str]] = None
    group_column: Optional[str] = None

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Task":
        if self.kind is TaskKind.MULTICLASS and self.n_classes is None:
            raise ValueError("a multiclass task needs n_classes")
        if self.kind is not TaskKind.MULTICLASS and self.n_classes is not None:
            raise ValueError("n_classes is only for multiclass tasks")
        loss = self.loss or DEFAULT_LOSS[self.kind]
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES.names())}")
        if loss in LOSS_KINDS and self.kind not in LOSS_KINDS[loss]:
            raise ValueError(f"loss {loss!r} does not fit a {self.kind.value} task")
        metrics = list(self.metrics) if self.metrics is not None else list(DEFAULT_METRICS[self.kind])
        for name in metrics:
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}; choose one of: {', '.join(METRICS.names())}")
            metric = METRICS.get(name)
            if self.kind.value not in metric.kinds:
                raise ValueError(f"metric {name!r} does not fit a {self.kind.value} task")
            if metric.needs_groups and self.group_column is None:
                raise ValueError(f"metric {name!r} needs group_column (e.g. the user id column)")
        object.__setattr__(self, "label", self.label or self.name)
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "metrics", metrics)
        return self

    # -- shapes ---------------------------------------------------------------------------
    @property
    def output_dim(self) -> int:
        """Number of logits the task's head must produce."""
        return self.n_classes if self.kind is TaskKind.MULTICLASS else 1  # type: ignore[return-value]

    @property
    def target_dtype(self) -> torch.dtype:
        return torch.long if self.kind is TaskKind.MULTICLASS else torch.float32

    # -- training -------------------------------------------------------------------------
    def compute_loss(
        self,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Weighted mean of the per-row loss over the rows that count."""
        row_loss = get_loss(self.loss)(logits, target)  # type: ignore[arg-type]
        row_weight = torch.ones_like(row_loss) if weight is None else weight.to(row_loss.dtype)
        if mask is not None:
            row_weight = row_weight * mask.to(row_loss.dtype)
        # clamp_min keeps an empty batch at 0/eps = 0 instead of 0/0 = NaN.
        return (row_loss * row_weight).sum() / row_weight.sum().clamp_min(1e-12)

    def predict(self, logits: Tensor) -> Tensor:
        """Probabilities for classification (``(B,)`` or ``(B, C)``), values for regression."""
        if self.kind is TaskKind.BINARY:
            return torch.sigmoid(logits)
        if self.kind is TaskKind.MULTICLASS:
            return torch.softmax(logits, dim=-1)
        return logits

    # -- validation -----------------------------------------------------------------------
    def label_problem(self, values: np.ndarray) -> str | None:
        """Describe the first invalid label (NaN means 'missing' and is allowed), or ``None``."""
        present = ~np.isnan(values)
        if self.kind is TaskKind.BINARY:
            bad = present & (values != 0) & (values != 1)
            expected = "0 or 1"
        elif self.kind is TaskKind.MULTICLASS:
            n = self.n_classes or 0
            bad = present & ((values != np.round(values)) | (values < 0) | (values >= n))
            expected = f"an integer class id in [0, {n - 1}]"
        else:
            bad = np.isinf(values)
            expected = "a finite number"
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            return f"data row {row + 1}: value {float(values[row])!r} (expected {expected})"
        return None
