"""Per-row losses computed from logits, each with its own validated options.

All take raw logits (never probabilities) so that the log-sum-exp is computed stably. A loss
may take keyword options (``focal``: ``gamma``, ``alpha``; ``huber``: ``delta``); they are
declared as a small pydantic model so that a task's ``loss_options`` is checked when the config
is loaded, long before the first step.

Example:
    >>> import torch
    >>> bce = get_loss("bce")
    >>> bce(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.6931, 0.6931])
    >>> validate_loss_options("focal", {"gamma": 1})
    {'gamma': 1.0, 'alpha': 0.25}
    >>> validate_loss_options("bce", {"gamma": 2})
    Traceback (most recent call last):
    ...
    ValueError: loss 'bce' takes no options (got 'gamma')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from mtlkit.registry import Registry

RowLoss = Callable[..., Tensor]
LOSSES: Registry[RowLoss] = Registry("loss")
# name -> pydantic model of the loss's keyword options; a loss not listed takes none.
LOSS_OPTIONS: dict[str, type[BaseModel]] = {}
# Losses that reduce over the batch themselves: ``fn(logits, target, weight, group, **options) -> scalar``
# with ``weight`` (B,) already holding sample weights × masks (0 = the row does not count).
BATCH_LOSSES: set[str] = set()
# Losses that compare rows of one group (request, user): the task needs ``group_column``.
GROUP_LOSSES: set[str] = set()
# Logits per row when a loss needs more than its task kind gives (ZILN: 3, JRC: 2).
LOSS_OUTPUT_DIM: dict[str, int] = {}


class FocalOptions(BaseModel):
    """Focal loss options; the defaults are the paper's best setting (γ = 2, α = 0.25)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gamma: float = Field(default=2.0, ge=0.0)
    alpha: float | None = Field(default=0.25, ge=0.0, le=1.0)


class HuberOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    delta: float = Field(default=1.0, gt=0.0)


LOSS_OPTIONS.update(focal=FocalOptions, huber=HuberOptions)


def validate_loss_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``options`` against loss ``name``; return them with defaults filled in.

    Raises ``ValueError`` (reported by pydantic at the task's config key) naming the option.
    """
    spec = LOSS_OPTIONS.get(name)
    if spec is None:
        if options:
            raise ValueError(f"loss {name!r} takes no options (got {sorted(options)[0]!r})")
        return {}
    try:
        return spec.model_validate(options).model_dump()
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(spec.model_fields)
            raise ValueError(f"loss {name!r} has no option {key!r} (it takes: {allowed})") from None
        raise ValueError(f"loss {name!r} option {key!r}: {first['msg']}") from None


@LOSSES.register("bce")
def binary_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits; ``logits`` and ``target`` have shape ``(B,)``."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


@LOSSES.register("focal")
def focal(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = 0.25) -> Tensor:
    """Focal loss, Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, Eq. 5.

    ``FL(p_t) = −α_t (1 − p_t)^γ log p_t`` with ``p_t = p`` for a positive and ``1 − p``
    for a negative, ``α_t = α`` for a positive and ``1 − α`` for a negative (``alpha=None``:
    no class weighting). ``γ = 0, α = None`` is exactly BCE. Computed from logits: ``−log p_t``
    is BCE-with-logits and ``log(1 − p_t) = logsigmoid(−s·x)`` with ``s = ±1`` the label's sign,
    so neither factor over- or underflows and the gradient stays finite even for γ < 1.

    Example:
        >>> import torch
        >>> x, y = torch.tensor([3.0, 3.0]), torch.tensor([1.0, 0.0])
        >>> focal(x, y, gamma=2.0, alpha=None) / binary_cross_entropy(x, y)   # (1 − p_t)^2
        tensor([0.0022, 0.9074])
    """
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma != 0:
        sign = 2.0 * target - 1.0
        ce = ce * torch.exp(gamma * F.logsigmoid(-sign * logits))
    if alpha is not None:
        ce = ce * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return ce


@LOSSES.register("mse")
def mean_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(prediction, target, reduction="none")


@LOSSES.register("huber")
def huber(prediction: Tensor, target: Tensor, delta: float = 1.0) -> Tensor:
    """Huber loss (quadratic within ``delta`` of the target, linear beyond; default 1)."""
    return F.huber_loss(prediction, target, reduction="none", delta=delta)


@LOSSES.register("cross_entropy")
def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy; ``logits`` is ``(B, C)`` and ``target`` holds class ids ``(B,)``."""
    return F.cross_entropy(logits, target, reduction="none")


def get_loss(name: str) -> RowLoss:
    return LOSSES.get(name)


__all__ = [
    "BATCH_LOSSES", "GROUP_LOSSES", "LOSSES", "LOSS_OPTIONS", "LOSS_OUTPUT_DIM",
    "FocalOptions", "HuberOptions", "RowLoss", "get_loss", "validate_loss_options",
]
