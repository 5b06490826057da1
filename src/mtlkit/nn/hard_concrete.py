"""Learned binary codes relaxed with the hard concrete distribution (Louizos et al., "Learning Sparse
Neural Networks through L0 Regularization", ICLR 2018).

Training draws ``u ~ U(0, 1)``, ``s = σ((log u − log(1 − u) + log α) / β)``, stretches it to
``(γ, ζ)`` and clamps to ``[0, 1]``: ``z = min(1, max(0, s(ζ − γ) + γ))``, so a code is
exactly 0 or 1 with positive probability and differentiable in ``log α`` in between. The
expected L0 norm (the paper's complexity term) is ``Σ σ(log α − β log(−γ/ζ))``. At evaluation the codes are
binarised deterministically: ``z = 1[min(1, max(0, σ(log α)(ζ − γ) + γ)) > 1/2]``, i.e. the
paper's test-time estimate rounded, so a served model routes with exact 0/1 codes.

Example:
    >>> import torch
    >>> codes = HardConcrete((2, 3))
    >>> codes.eval()().unique().tolist()
    [1.0]
    >>> float(codes.expected_l0().detach()) <= 6.0
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HardConcrete(nn.Module):
    def __init__(
        self,
        shape: tuple[int, ...],
        init_log_alpha: float = 2.0,
        beta: float = 2.0 / 3.0,
        limits: tuple[float, float] = (-0.1, 1.1),
    ) -> None:
        super().__init__()
        lower, upper = limits
        if not (lower < 0.0 and upper > 1.0 and beta > 0):
            raise ValueError("hard concrete needs limits (γ < 0, ζ > 1) and temperature β > 0")
        # Small jitter breaks ties between codes (Louizos et al. initialise with N(·, 0.01)).
        self.log_alpha = nn.Parameter(torch.full(shape, float(init_log_alpha)) + 0.01 * torch.randn(shape))
        self.beta, self.lower, self.upper = beta, lower, upper

    def forward(self) -> Tensor:
        """One sample of the codes while training; exact 0/1 codes at evaluation."""
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1.0 - 1e-6)
            s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / self.beta)
        else:
            s = torch.sigmoid(self.log_alpha)
        z = (s * (self.upper - self.lower) + self.lower).clamp(0.0, 1.0)
        return z if self.training else (z > 0.5).to(z.dtype)

    def expected_l0(self) -> Tensor:
        """``Σ P(z ≠ 0)`` over the codes: the expected L0 norm (Louizos et al. 2018)."""
        shift = self.beta * math.log(-self.lower / self.upper)
        return torch.sigmoid(self.log_alpha - shift).sum()

    def extra_repr(self) -> str:
        return f"shape={tuple(self.log_alpha.shape)}, beta={self.beta:.3g}, limits=({self.lower}, {self.upper})"
