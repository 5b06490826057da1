"""ZILN: the zero-inflated lognormal loss for long-tailed values such as customer lifetime value
(Wang, Liu & Miao, "A Deep Probabilistic Model for Customer Lifetime Value Prediction", 2019,
§3.2, Eq. 1-3).

A regression task with ``loss: ziln`` gets three logits per row ``(l_p, μ, σ̃)``: the probability
of a non-zero value ``p = σ(l_p)`` and a lognormal for the positive values, ``σ = softplus(σ̃)``:

    L = BCE(1[y > 0], l_p) + 1[y > 0] · ( log y + log σ + ½ log 2π + (log y − μ)² / (2σ²) )

The served prediction is the calibrated expected value (the paper's read-out),
``E[y] = p · exp(μ + σ²/2)``; labels must be ≥ 0.

Example:
    >>> import torch
    >>> raw = torch.tensor([[0.0, 1.0, 0.5413]])           # p = ½, μ = 1, σ ≈ 1
    >>> round(float(ziln_expected_value(raw)[0]), 3)       # ½ · e^{1.5}
    2.241
    >>> ziln(raw, torch.tensor([0.0])).shape
    torch.Size([1])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.losses.registry import LOSS_OUTPUT_DIM, LOSSES

MIN_SIGMA = 1e-4


def _parts(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return logits[..., 0], logits[..., 1], F.softplus(logits[..., 2]).clamp_min(MIN_SIGMA)


@LOSSES.register("ziln")
def ziln(logits: Tensor, target: Tensor) -> Tensor:
    """Per-row ZILN negative log-likelihood; ``logits`` ``(B, 3)``, ``target`` ``(B,)`` ≥ 0."""
    p_logit, mu, sigma = _parts(logits)
    positive = target > 0
    classification = F.binary_cross_entropy_with_logits(p_logit, positive.to(logits.dtype), reduction="none")
    safe = torch.where(positive, target, torch.ones_like(target))
    log_y = torch.log(safe)
    nll = log_y + torch.log(sigma) + 0.5 * math.log(2 * math.pi) + (log_y - mu) ** 2 / (2 * sigma**2)
    return classification + torch.where(positive, nll, torch.zeros_like(nll))


def ziln_expected_value(logits: Tensor) -> Tensor:
    """``E[y] = σ(l_p) · exp(μ + σ²/2)``."""
    p_logit, mu, sigma = _parts(logits)
    return torch.sigmoid(p_logit) * torch.exp(mu + 0.5 * sigma**2)


LOSS_OUTPUT_DIM["ziln"] = 3

__all__ = ["ziln", "ziln_expected_value"]
