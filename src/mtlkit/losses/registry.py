"""The per-row losses every task kind needs: BCE, MSE, Huber and cross-entropy.

All take raw logits (never probabilities) so that the log-sum-exp is computed stably.

Example:
    >>> import torch
    >>> bce = get_loss("bce")
    >>> bce(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.6931, 0.6931])
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.registry import Registry

RowLoss = Callable[[Tensor, Tensor], Tensor]
LOSSES: Registry[RowLoss] = Registry("loss")


@LOSSES.register("bce")
def binary_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits; ``logits`` and ``target`` have shape ``(B,)``."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


@LOSSES.register("mse")
def mean_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(prediction, target, reduction="none")


@LOSSES.register("huber")
def huber(prediction: Tensor, target: Tensor) -> Tensor:
    """Huber loss with delta 1 (quadratic within one unit of the target, linear beyond)."""
    return F.huber_loss(prediction, target, reduction="none", delta=1.0)


@LOSSES.register("cross_entropy")
def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy; ``logits`` is ``(B, C)`` and ``target`` holds class ids ``(B,)``."""
    return F.cross_entropy(logits, target, reduction="none")


def get_loss(name: str) -> RowLoss:
    return LOSSES.get(name)


__all__ = ["LOSSES", "RowLoss", "get_loss"]
