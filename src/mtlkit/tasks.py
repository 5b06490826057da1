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

Sparse and skewed tasks (focal loss, negatives kept at 5 % and calibrated back at prediction):
    >>> share = Task(name="share", kind="binary", loss="focal", loss_options={"gamma": 2, "alpha": None},
    ...              negative_sampling_rate=0.05)
    >>> share.loss_options
    {'gamma': 2.0, 'alpha': None}
    >>> round(share.predict(torch.tensor([0.0])).item(), 4)   # 0.5 on the sampled data, 0.05/1.05 in the world
    0.0476
    >>> watch = Task(name="watch", kind="regression", label_transform="log1p")
    >>> round(watch.predict(torch.log1p(torch.tensor([30.0]))).item(), 3)   # learns log1p(s), serves seconds
    30.0
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from mtlkit.losses import BATCH_LOSSES, GROUP_LOSSES, LOSS_OUTPUT_DIM, LOSSES, get_loss, validate_loss_options, ziln_expected_value
from mtlkit.metrics import METRICS

FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_REGRESSION_LABEL = 1e15  # its square, summed over a batch, stays finite in float32


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
    "focal": {TaskKind.BINARY},
    "mse": {TaskKind.REGRESSION},
    "huber": {TaskKind.REGRESSION},
    "cross_entropy": {TaskKind.MULTICLASS},
    "pairwise": {TaskKind.BINARY, TaskKind.REGRESSION},
    "listwise": {TaskKind.BINARY, TaskKind.REGRESSION},
    "jrc": {TaskKind.BINARY},
    "ziln": {TaskKind.REGRESSION},
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

    Sparse and skewed tasks (binary unless noted):

    - ``loss_options``: keyword options of the loss, checked against it when the task is built
      (``focal``: ``gamma`` ≥ 0, default 2, ``alpha`` in [0, 1] or null, default 0.25, the paper's
      best; ``huber``: ``delta`` > 0, default 1); the
      resolved task holds them with defaults filled in.
    - ``negative_sampling_rate`` ``r``: the training data kept each negative with probability
      ``r`` (see :func:`mtlkit.data.sampling.downsample_negatives`). The learned odds are then
      inflated by ``1/r``; :meth:`predict` multiplies them back (He et al. 2014):
      ``p' = p / (p + (1 − p)/r)``. Sample only the training split: validation and test stay
      as the world is, so that the corrected metrics are honest.
    - ``negative_weight`` ``v`` (default 1): rows labelled 0 get ``v`` times their weight
      (``weight_column`` and masks still apply). It inflates the odds by ``1/v`` exactly as
      sampling does, so predictions are corrected with ``w = r·v`` (both default to 1).
    - ``positive_weight_column``: YouTube's weighted logistic regression (Covington et al.,
      RecSys 2016, §4.2): positives are weighted by this column (e.g. watch time in seconds),
      negatives by 1. The learned odds ``e^logit ≈ ΣT/(N − k) = E[T]·N/(N − k) ≈ E[T](1 + P)``
      estimate the expected watch time per impression; read them with ``output: odds``
      (or :meth:`predict_odds`). Metrics still score the probability.
    - ``label_transform: log1p`` (regression): the loss sees ``log1p(label)`` (MSE or Huber on
      log seconds for heavy-tailed watch time); :meth:`predict` and metrics are back in label
      units via ``expm1``. Note ``expm1(E[log1p T])`` estimates a typical (geometric-mean-like)
      value, below the mean ``E[T]``; for the mean use the weighted logistic regression.

    Adversarial tasks (binary or multiclass): ``grl_lambda`` λ puts a gradient reversal layer
    (:mod:`mtlkit.nn.gradient_reversal`; Ganin & Lempitsky 2015, Eq. 13) between the shared
    representation and this task's tower: the tower learns the label (a domain such as the
    scenario or the device) while the shared layers learn to hide it; ``grl_schedule: ganin``
    anneals λ over training. Monitor a main task (``train.monitor: click/auc``): a good
    adversary means a *low* score on this task.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    kind: TaskKind
    label: str | None = None
    n_classes: int | None = Field(default=None, ge=2)
    loss: str | None = None
    loss_options: dict[str, Any] = Field(default_factory=dict)
    loss_weight: float = Field(default=1.0, ge=0.0)
    weight_column: str | None = None
    negative_weight: float = Field(default=1.0, gt=0.0)
    negative_sampling_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    positive_weight_column: str | None = None
    output: Literal["probability", "odds"] = "probability"
    label_transform: Literal["none", "log1p"] = "none"
    mask: TaskMask | None = None
    metrics: list[str] | None = None
    group_column: str | None = None
    grl_lambda: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    grl_schedule: Literal["constant", "ganin"] = "constant"

    @model_validator(mode="after")
    def _fill_defaults(self) -> Task:
        if self.kind is TaskKind.MULTICLASS and self.n_classes is None:
            raise ValueError("a multiclass task needs n_classes")
        if self.kind is not TaskKind.MULTICLASS and self.n_classes is not None:
            raise ValueError("n_classes is only for multiclass tasks")
        loss = self.loss or DEFAULT_LOSS[self.kind]
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES.names())}")
        if loss in LOSS_KINDS and self.kind not in LOSS_KINDS[loss]:
            raise ValueError(f"loss {loss!r} does not fit a {self.kind.value} task")
        loss_options = validate_loss_options(loss, dict(self.loss_options))
        if loss == "ohem":
            base = loss_options["base"]
            if self.kind not in LOSS_KINDS[base]:
                raise ValueError(f"loss 'ohem' base {base!r} does not fit a {self.kind.value} task")
        if loss in GROUP_LOSSES and self.group_column is None:
            raise ValueError(f"loss {loss!r} compares rows within a group: set group_column (e.g. the request or user id column)")
        if loss in LOSS_OUTPUT_DIM and self.label_transform != "none":
            raise ValueError(f"loss {loss!r} models the label itself: label_transform must be none")
        if self.kind is not TaskKind.BINARY:
            binary_only = {
                "negative_weight": self.negative_weight != 1.0,
                "negative_sampling_rate": self.negative_sampling_rate is not None,
                "positive_weight_column": self.positive_weight_column is not None,
                "output: odds": self.output == "odds",
            }
            for key, used in binary_only.items():
                if used:
                    raise ValueError(f"{key} is only for binary tasks")
        if self.label_transform != "none" and self.kind is not TaskKind.REGRESSION:
            raise ValueError("label_transform is only for regression tasks")
        if self.grl_lambda is not None and self.kind is TaskKind.REGRESSION:
            raise ValueError("grl_lambda (an adversarial task) is for binary or multiclass tasks")
        if self.grl_lambda is None and self.grl_schedule != "constant":
            raise ValueError("grl_schedule needs grl_lambda")
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
        object.__setattr__(self, "loss_options", loss_options)
        object.__setattr__(self, "metrics", metrics)
        return self

    # -- data -----------------------------------------------------------------------------
    def columns(self) -> dict[str, str]:
        """The data columns this task reads, by role: ``label``, then whichever of ``weight``,
        ``positive_weight``, ``mask`` and ``group`` (evaluation only: GAUC) it names."""
        roles = {"label": self.label, "weight": self.weight_column, "positive_weight": self.positive_weight_column,
                 "mask": self.mask.column if self.mask else None, "group": self.group_column}
        return {role: column for role, column in roles.items() if column is not None}

    @property
    def loss_family(self) -> str:
        """``"regression"`` (a Gaussian likelihood) or ``"classification"``: what uncertainty weighting models."""
        return "regression" if self.kind is TaskKind.REGRESSION else "classification"

    # -- shapes ---------------------------------------------------------------------------
    @property
    def output_dim(self) -> int:
        """Number of logits the task's head must produce."""
        if self.loss in LOSS_OUTPUT_DIM:
            return LOSS_OUTPUT_DIM[self.loss]
        return self.n_classes if self.kind is TaskKind.MULTICLASS else 1  # type: ignore[return-value]

    @property
    def needs_groups(self) -> bool:
        """Whether the loss compares rows of one group (the training batches then carry the group ids)."""
        return self.loss in GROUP_LOSSES

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
        group: Tensor | None = None,
    ) -> Tensor:
        """Weighted mean of the per-row loss over the rows that count.

        ``target`` is in label units (``label_transform`` is applied here, so a caller never
        pre-transforms); ``weight`` already holds ``weight_column`` × positive weights; ``group``
        the group ids of a ranking loss. A batch loss (ranking, OHEM) gets the row weights
        (× mask) and reduces itself.
        """
        if self.label_transform == "log1p":
            target = torch.log1p(target)
        if self.loss in BATCH_LOSSES:
            row_weight = torch.ones_like(target, dtype=logits.dtype) if weight is None else weight.to(logits.dtype)
            if self.negative_weight != 1.0:
                row_weight = row_weight * (1.0 + (self.negative_weight - 1.0) * (target == 0).to(logits.dtype))
            if mask is not None:
                row_weight = row_weight * mask.to(logits.dtype)
            if self.needs_groups and group is None:
                raise ValueError(f"task {self.name!r}: loss {self.loss!r} needs the group ids of column {self.group_column!r}")
            return get_loss(self.loss)(logits, target, row_weight, group, **self.loss_options)
        row_loss = get_loss(self.loss)(logits, target, **self.loss_options)  # type: ignore[arg-type]
        row_weight = torch.ones_like(row_loss) if weight is None else weight.to(row_loss.dtype)
        if self.negative_weight != 1.0:
            row_weight = row_weight * (1.0 + (self.negative_weight - 1.0) * (target == 0).to(row_loss.dtype))
        if mask is not None:
            row_weight = row_weight * mask.to(row_loss.dtype)
        # clamp_min keeps an empty batch at 0/eps = 0 instead of 0/0 = NaN.
        return (row_loss * row_weight).sum() / row_weight.sum().clamp_min(1e-12)

    # -- prediction -----------------------------------------------------------------------
    @property
    def negative_odds_factor(self) -> float:
        """``w = negative_sampling_rate × negative_weight``: training saw ``w``× the true negatives."""
        return (self.negative_sampling_rate or 1.0) * self.negative_weight

    def _corrected_logits(self, logits: Tensor) -> Tensor:
        if self.loss == "jrc":  # two logits (s⁰, s¹): the binary logit is s¹ − s⁰
            logits = logits[..., 1] - logits[..., 0]
        # odds' = odds·w  ⇔  p' = p / (p + (1 − p)/w)  ⇔  logit' = logit + log w (stable).
        w = self.negative_odds_factor
        return logits if w == 1.0 else logits + math.log(w)

    def predict(self, logits: Tensor) -> Tensor:
        """What the task serves: a probability (or odds, with ``output: odds``) for binary tasks,
        class probabilities ``(B, C)`` for multiclass, a value in label units for regression.

        Binary outputs are calibrated to the data before negative sampling / re-weighting.
        """
        if self.kind is TaskKind.BINARY:
            return self.predict_odds(logits) if self.output == "odds" else torch.sigmoid(self._corrected_logits(logits))
        if self.kind is TaskKind.MULTICLASS:
            return torch.softmax(logits, dim=-1)
        if self.loss == "ziln":
            return ziln_expected_value(logits)
        return torch.expm1(logits) if self.label_transform == "log1p" else logits

    def predict_odds(self, logits: Tensor) -> Tensor:
        """``e^logit`` (times ``w``): for weighted logistic regression, the expected watch time."""
        if self.kind is not TaskKind.BINARY:
            raise ValueError(f"task {self.name!r}: odds are only defined for binary tasks")
        return torch.exp(self._corrected_logits(logits))

    def predict_for_metrics(self, logits: Tensor) -> Tensor:
        """What metrics score: like :meth:`predict`, but always a probability for binary tasks."""
        if self.kind is TaskKind.BINARY:
            return torch.sigmoid(self._corrected_logits(logits))
        return self.predict(logits)

    # -- validation -----------------------------------------------------------------------
    def invalid_labels(self, values: np.ndarray) -> tuple[np.ndarray, str]:
        """The rows whose label this task cannot use (NaN means 'missing' and is allowed), and what is expected."""
        present = ~np.isnan(values)
        if self.kind is TaskKind.BINARY:
            return present & (values != 0) & (values != 1), "0 or 1"
        if self.kind is TaskKind.MULTICLASS:
            n = self.n_classes or 0
            return present & ((values != np.round(values)) | (values < 0) | (values >= n)), f"an integer class id in [0, {n - 1}]"
        if self.loss == "ziln":
            return present & ((values < 0) | (values > FLOAT32_MAX)), "a finite number >= 0, as the loss is ziln"
        if self.label_transform == "log1p":  # the label is float32 before log1p: beyond its range it is inf
            return present & ((values <= -1) | (values > FLOAT32_MAX)), "a finite number > -1, as label_transform is log1p"
        return present & (np.abs(values) > MAX_REGRESSION_LABEL), (
            f"a finite number of magnitude <= {MAX_REGRESSION_LABEL:g}: larger squared errors overflow float32; "
            "rescale it, or set label_transform: log1p")

    def label_problem(self, values: np.ndarray) -> str | None:
        """Describe the first invalid label (see :meth:`invalid_labels`), or ``None``."""
        bad, expected = self.invalid_labels(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            return f"data row {row + 1}: value {float(values[row])!r} (expected {expected})"
        return None
