"""Gating networks: ``G`` gates over ``E`` experts, computed together in one batched op.

* ``softmax`` — the MMoE gate ``g^k(x) = softmax(W_gk x)`` (Ma et al., KDD 2018, Eq. 8).
* ``dselect_k`` — DSelect-k (Hazimeh et al., NeurIPS 2021), example-conditioned:
  ``q(x) = Σ_{i=1..k} softmax(α(x))_i r(z^(i)(x))`` with ``k`` single-expert selectors
  ``r(z)_j = Π_l S(z_l)^[bit_l(j)] (1 − S(z_l))^[1 − bit_l(j)]`` over ``m = ⌈log2 E⌉`` binary
  codes; ``S`` is the cubic smooth-step of width ``gamma``, which reaches exact 0 and 1, so
  trained gates become sparse (at most ``k`` experts).
  When ``E`` is not a power of two, a code ``c ≥ E`` is folded onto expert ``c − E`` (the
  reference implementation instead penalises such codes), so each selector always is a
  distribution over real experts.
* gate dropout (Zhao et al., RecSys 2019, against gate polarisation): while training, each gate weight is zeroed with
  probability ``dropout`` and the rest renormalised; at evaluation the gate is deterministic.

Every gate outputs a distribution over experts (non-negative, summing to one).

Example:
    >>> import torch
    >>> gates = Gates(input_dim=6, n_gates=2, n_experts=3)
    >>> w = gates(torch.randn(5, 6))
    >>> w.shape, bool(torch.allclose(w.sum(-1), torch.ones(5, 2)))
    (torch.Size([5, 2, 3]), True)
    >>> sparse = Gates(6, 2, 8, kind="dselect_k", k=2)
    >>> bool(torch.allclose(sparse(torch.randn(5, 6)).sum(-1), torch.ones(5, 2)))
    True
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from mtlkit.nn.experts import BatchedLinear

GateKind = Literal["softmax", "dselect_k"]


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """Cubic smooth-step of DSelect-k: 0 below −γ/2, 1 above γ/2, ``−2t³/γ³ + 3t/(2γ) + 1/2`` in between."""
    inner = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), inner))


def gate_dropout(weights: Tensor, p: float) -> Tensor:
    """Zero each weight with probability ``p`` and renormalise (Zhao et al. 2019).

    A row whose kept weights sum to zero (all dropped) keeps its original weights, so the
    output is always a distribution.
    """
    keep = torch.rand_like(weights) >= p
    dropped = weights * keep
    total = dropped.sum(-1, keepdim=True)
    return torch.where(total > 0, dropped / total.clamp_min(torch.finfo(weights.dtype).tiny), weights)


class Gates(nn.Module):
    """``n_gates`` gates, each a distribution over ``n_experts`` experts.

    ``forward`` takes ``(B, in)`` (every gate reads the same input: one matmul for all gates) or
    ``(B, n_gates, in)`` (each gate reads its own input, as in PLE from level 2: one ``bmm``)
    and returns ``(B, n_gates, n_experts)``.
    """

    bits: Tensor  # dselect_k only
    fold: Tensor  # dselect_k only

    def __init__(
        self,
        input_dim: int,
        n_gates: int,
        n_experts: int,
        kind: GateKind = "softmax",
        k: int = 2,
        gamma: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"gate dropout must be in [0, 1), got {dropout}")
        self.kind, self.n_gates, self.n_experts, self.dropout = kind, n_gates, n_experts, dropout
        if kind == "softmax":
            self.linear = BatchedLinear(n_gates, input_dim, n_experts, bias=False)  # Eq. 8 has no bias
        elif kind == "dselect_k":
            if k < 1 or gamma <= 0:
                raise ValueError(f"dselect_k needs k >= 1 and gamma > 0, got k={k}, gamma={gamma}")
            self.k, self.gamma = k, gamma
            self.n_bits = math.ceil(math.log2(n_experts)) if n_experts > 1 else 0
            # Per gate: k·m selector codes z and k selector logits α, from one linear map.
            self.linear = BatchedLinear(n_gates, input_dim, k * self.n_bits + k)
            with torch.no_grad():  # small codes: S(z) ≈ 1/2, every expert reachable at the start
                z_cols = slice(0, k * self.n_bits)
                assert self.linear.bias is not None  # built with a bias just above
                self.linear.weight[..., z_cols].uniform_(-gamma / 100, gamma / 100)
                self.linear.bias[..., z_cols].uniform_(-gamma / 100, gamma / 100)
            codes = torch.arange(2**self.n_bits)
            bits = (codes[:, None] >> torch.arange(self.n_bits - 1, -1, -1)) & 1  # (2^m, m), MSB first
            fold = torch.zeros(2**self.n_bits, n_experts)
            fold[codes, codes % n_experts] = 1.0
            self.register_buffer("bits", bits.float(), persistent=False)
            self.register_buffer("fold", fold, persistent=False)
        else:
            raise ValueError(f"unknown gate kind {kind!r}; choose softmax or dselect_k")

    def forward(self, x: Tensor) -> Tensor:
        return self.from_logits(self.linear(x))

    def from_logits(self, logits: Tensor) -> Tensor:
        """The gate weights ``(B, G, E)`` from ``self.linear``'s output ``(B, G, ·)`` (computed elsewhere,
        e.g. inside the experts' GEMM: :func:`mtlkit.nn.experts.shared_input_linears`)."""
        weights = logits.softmax(-1) if self.kind == "softmax" else self._dselect(logits)
        if self.training and self.dropout > 0:
            weights = gate_dropout(weights, self.dropout)
        return weights

    def _dselect(self, logits: Tensor) -> Tensor:
        batch, m, k = logits.shape[0], self.n_bits, self.k
        z = logits[..., : k * m].reshape(batch, self.n_gates, k, 1, m)
        alpha = logits[..., k * m :].softmax(-1)  # (B, G, k) selector weights
        s = smooth_step(z, self.gamma)
        # r_j = Π_l (bit ? S : 1 − S): a distribution over the 2^m codes.
        selectors = (self.bits * s + (1 - self.bits) * (1 - s)).prod(-1)  # (B, G, k, 2^m)
        per_expert = selectors @ self.fold  # (B, G, k, E)
        return torch.einsum("bgk,bgke->bge", alpha, per_expert)

    def extra_repr(self) -> str:
        extra = f", k={self.k}, gamma={self.gamma}" if self.kind == "dselect_k" else ""
        return f"kind={self.kind}, n_gates={self.n_gates}, n_experts={self.n_experts}, dropout={self.dropout}{extra}"
