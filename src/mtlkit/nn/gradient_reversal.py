"""Gradient reversal (Ganin & Lempitsky, ICML 2015, Eq. 13), shared by NLP domain tasks and tabular adversarial tasks.

``R_λ`` is the identity in the forward pass and multiplies the gradient by ``−λ`` in the
backward pass (``dR_λ/dx = −λ·I``). Between a shared representation and a task's head, the head
learns to predict its label (a domain: country, scenario, device) while the shared layers
receive the reversed gradient and learn to hide it. ``grl_schedule: ganin`` anneals λ as in the
paper (§5.2.1): ``λ_p = λ · (2/(1+exp(−10p)) − 1)`` over the fraction ``p`` of training done.

Example:
    >>> import torch
    >>> x = torch.ones(3, requires_grad=True)
    >>> reverse_gradient(x, 0.5).sum().backward()
    >>> x.grad.tolist()
    [-0.5, -0.5, -0.5]
    >>> scheduled_lambda(1.0, "ganin", 0.0), round(scheduled_lambda(1.0, "ganin", 1.0), 4), scheduled_lambda(0.3, "constant", 0.0)
    (0.0, 0.9999, 0.3)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lam * grad, None


def reverse_gradient(x: Tensor, lam: float = 1.0) -> Tensor:
    """``R_λ(x)``: ``x`` forward, ``−λ·grad`` backward (Ganin & Lempitsky 2015, Eq. 13)."""
    return _GradientReversal.apply(x, lam)


def scheduled_lambda(lam: float, schedule: str, progress: float) -> float:
    """λ at the fraction ``progress`` of training: constant, or the paper's ``ganin`` annealing."""
    if schedule == "ganin":
        return lam * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)
    return lam


__all__ = ["reverse_gradient", "scheduled_lambda"]
