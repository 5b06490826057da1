"""AITM: adaptive information transfer between sequentially dependent tasks (Xi et al., KDD 2021).

For a conversion funnel t = 1 … T (impression → click → purchase → …) each task's tower gives
``q_t``. The previous task's fused output is passed through a transfer MLP,
``p_{t−1} = g_{t−1}(z_{t−1})``, and the AIT module (Eq. 3-5) attends over the two vectors:

    w_u = softmax_u( ⟨h1(u), h2(u)⟩ / √k ),   z_t = Σ_{u ∈ {p_{t−1}, q_t}} w_u · h3(u)

with ``h1, h2, h3`` linear maps to ``k`` dimensions and ``z_1 = q_1``. Each ``z_t`` then feeds
the task's output layer. The behavioural expectation calibrator (Eq. 7) penalises a later
task predicted more likely than its predecessor:

    L_c = α · Σ_{t ≥ 2} mean_i max(ŷ_t,i − ŷ_{t−1},i, 0)

mtlkit adds that term to the *later* task's loss (it is that task's constraint), so balancers
see it as part of the task objective.

Example:
    >>> import torch
    >>> ait = AdaptiveTransfer(dim=8)
    >>> z, w = ait(torch.randn(2, 8), torch.randn(2, 8))
    >>> z.shape, bool(torch.allclose(w.sum(-1), torch.ones(2)))
    (torch.Size([2, 8]), True)
    >>> round(float(calibrator_loss(torch.tensor([[0.5, 0.2], [0.3, 0.4]]), alpha=1.0)), 4)  # row 2 violates
    0.05
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class AdaptiveTransfer(nn.Module):
    """The AIT module: attention over (transferred previous output, current tower output)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)   # h1
        self.key = nn.Linear(dim, dim)     # h2
        self.value = nn.Linear(dim, dim)   # h3
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, transferred: Tensor, current: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, weights)``; ``weights[:, 0]`` is the share taken from the previous task."""
        u = torch.stack([transferred, current], dim=1)  # (B, 2, k)
        weights = torch.softmax((self.query(u) * self.key(u)).sum(-1) * self.scale, dim=-1)
        return (weights.unsqueeze(-1) * self.value(u)).sum(1), weights


class TransferChain(nn.Module):
    """AIT modules and transfer MLPs for a chain of tasks with equal tower widths."""

    def __init__(self, chain: list[str], dim: int) -> None:
        super().__init__()
        self.chain = list(chain)
        self.transfer = nn.ModuleDict({t: nn.Sequential(nn.Linear(dim, dim), nn.ReLU()) for t in self.chain[:-1]})
        self.ait = nn.ModuleDict({t: AdaptiveTransfer(dim) for t in self.chain[1:]})
        self.last_weights: dict[str, Tensor] = {}

    def fuse(self, task: str, previous: str | None, previous_z: Tensor | None, current: Tensor) -> Tensor:
        if previous is None or previous_z is None:
            return current
        z, weights = self.ait[task](self.transfer[previous](previous_z), current)
        self.last_weights[task] = weights.detach()
        return z


def calibrator_loss(probabilities: Tensor, alpha: float) -> Tensor:
    """α · Σ_t mean_i max(ŷ_t − ŷ_{t−1}, 0) for ``probabilities`` of shape ``(B, T)`` in chain order."""
    violation = (probabilities[:, 1:] - probabilities[:, :-1]).clamp_min(0)
    return alpha * violation.mean(0).sum()


__all__ = ["AdaptiveTransfer", "TransferChain", "calibrator_loss"]
