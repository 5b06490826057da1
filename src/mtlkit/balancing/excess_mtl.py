"""ExcessMTL: robust multi-task learning with excess risks (He, Zhou, Zhao & Zhao, ICML 2024,
Eq. 6-9 / Algorithm 1).

Tasks are weighted by their *excess* risk (distance to their own optimum) rather than their loss,
so a task with high irreducible noise does not take over. The excess risk of task ``k`` is
approximated to second order with an AdaGrad-style diagonal Hessian:

    Ê_k = g_kᵀ H_k⁻¹ g_k,   H_k = diag( √(Σ_{s≤t} g_{k,s}² + ε) )             (Eq. 6-7)
    α_k ← α_k · exp( η · Ê_k / Ê_k⁰ ),  α ← T · α / Σ α                       (Eq. 9, scaled)

with ``Ê_k⁰`` task ``k``'s excess risk at its first step (the scale normalisation of §3.2) and the
weights kept summing to ``T`` (LibMTL 1.1.5; uniform weights are the plain sum). The update is
``Σ_k α_k ∇f_k`` for the shared part *and* the towers (the paper's step weights the whole loss).

Implemented here rather than through torchjd's ``ExcessMTLWeighting`` (0.18): that one takes its
baseline from the first call for every task at once, so a task with no labelled row in the first
batch (a sparse conversion task) gets a zero baseline and, from then on, saturated weight; here
each task's baseline is its own first present step, an absent task's weight is not updated, and
its weight in the step is 0. Otherwise the update is the same (tested against a transcription of
LibMTL's loop). ``S = Σ g²`` (``T × n``) and ``α`` are saved in checkpoints; sparse embedding
tables stay outside the Jacobian (``sparse_tables: outside``).

Options: ``robust_step_size`` (η, default 1.0 as torchjd), ``eps`` (1e-7).

Example:
    >>> import torch
    >>> b = ExcessMTL(["a", "b"], ExcessMTL.Options())
    >>> present = torch.tensor([True, True])
    >>> _ = b.aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), present)   # baseline step: α = (1, 1)
    >>> _ = b.aggregate(torch.tensor([[2.0, 0.0], [0.0, 0.1]]), present)   # a's excess risk grew
    >>> w = b.last_weights; bool(w[0] > 1 > w[1]), round(float(w.sum()), 4)
    (True, 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.gradient import GradientBalancer, GradientOptions


class ExcessMTLOptions(GradientOptions):
    robust_step_size: float = Field(default=1.0, gt=0)
    eps: float = Field(default=1e-7, gt=0)
    sparse_tables: Literal["outside"] = "outside"  # S accumulates over fixed columns


@BALANCERS.register("excess_mtl")
class ExcessMTL(GradientBalancer):
    Options = ExcessMTLOptions
    options: ExcessMTLOptions
    alpha: Tensor
    baseline: Tensor

    def __init__(self, task_names: Sequence[str], options: ExcessMTLOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        t = len(self.task_names)
        self.register_buffer("alpha", torch.ones(t))
        self.register_buffer("baseline", torch.zeros(t))  # Ê_k⁰; 0 until task k's first present step
        self.squares: Tensor | None = None

    def aggregate(self, jacobian: Tensor, present: Tensor) -> Tensor:
        if self.squares is None or self.squares.shape != jacobian.shape:
            self.squares = torch.zeros_like(jacobian)
        squares = self.squares.to(jacobian) + jacobian.detach() ** 2
        self.squares = squares
        excess = (jacobian.detach() ** 2 / torch.sqrt(squares + self.options.eps)).sum(1)
        baseline = self.baseline.to(jacobian)
        first = present & (baseline == 0)
        update = present & (baseline > 0)
        ratio = torch.where(update, excess / baseline.clamp_min(1e-30), torch.zeros_like(excess))
        alpha = self.alpha.to(jacobian) * torch.exp(self.options.robust_step_size * ratio)
        alpha = len(self.task_names) * alpha / alpha.sum()
        self.alpha.copy_(alpha)
        self.baseline.copy_(torch.where(first, excess.clamp_min(1e-30), baseline))
        w = torch.where(present, alpha, torch.zeros_like(alpha))
        self.last_weights = w.detach()
        return w @ jacobian

    def objectives(self, losses: Mapping[str, Tensor]) -> tuple[list[int], list[Tensor], Tensor]:
        rows, objectives, f = super().objectives(losses)
        self._rows = rows  # which task each objective is, for the towers' weighted backward
        return rows, objectives, f

    def _backward_others(self, objectives: Sequence[Tensor], other: Sequence[Tensor]) -> None:
        if other and objectives:
            weights = self.alpha[self._rows].to(objectives[0])  # this step's α (set by aggregate)
            torch.autograd.backward((torch.stack(list(objectives)) * weights).sum(), inputs=list(other))

    def get_extra_state(self) -> Any:
        return {"squares": self.squares}

    def set_extra_state(self, state: Any) -> None:
        self.squares = state.get("squares") if state else None


__all__ = ["ExcessMTL", "ExcessMTLOptions"]
