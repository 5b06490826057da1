"""MoCo: multi-objective gradient correction (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen,
"Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach",
ICLR 2023, Algorithm 1, Eq. 8-9).

Stochastic MGDA is biased: the min-norm weights of noisy gradients are a biased estimate of the
weights of the true ones. MoCo tracks each task's gradient and updates the weights by one
projected step instead of solving the min-norm problem:

    y_k ← y_k − β_t (y_k − h_k)                                           (Eq. 8, tracking)
    λ ← Π_Δ( λ − γ_t (Y Yᵀ + ρ I) λ )                                      (Eq. 9, weights)
    d = Yᵀ λ

with ``β_t = β / t^{σ_β}``, ``γ_t = γ / t^{σ_γ}`` and ``h_k`` task ``k``'s stochastic gradient of
the shared part. As in the authors' code shared through LibMTL 1.1.5, ``h_k = L_k · g_k/‖g_k‖``
(``normalize: true``; false uses ``g_k`` itself). Π_Δ is the Euclidean projection onto the
simplex (the paper); ``weight_update: softmax`` uses LibMTL's ``softmax(λ − γ_t(…)λ)`` instead.

A task absent from the step (no labelled row: zero gradient) keeps its tracked gradient, takes
no part in the update (its weight is 0 for the step; the projection runs over the present tasks)
and is not moved. The tracked ``Y`` (``T × n``) and ``λ`` are saved in checkpoints. ``Y`` spans the
dense shared parameters, so embedding tables in sparse-gradient mode stay outside the Jacobian
(``sparse_tables: outside``; their touched rows change every step).

Options: ``beta`` (0.5), ``beta_sigma`` (0.5), ``gamma`` (0.1), ``gamma_sigma`` (0.5), ``rho``
(0), ``normalize`` (true), ``weight_update`` (``projection`` | ``softmax``) — LibMTL's defaults.

Example:
    >>> import torch
    >>> b = MoCo(["a", "b"], MoCo.Options(beta=1.0, normalize=False))   # β_1 = 1: y = g
    >>> J = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    >>> d = b.aggregate(J, torch.tensor([True, True]))
    >>> [round(float(x), 3) for x in b.last_weights]   # Π_Δ((½, ½) − 0.1·diag(1, 9)(½, ½))
    [0.7, 0.3]
    >>> [round(float(x), 3) for x in d]
    [0.7, 0.9]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.gradient import GradientBalancer, GradientOptions


def project_simplex(v: Tensor, present: Tensor) -> Tensor:
    """Euclidean projection of ``v[present]`` onto the probability simplex; absent entries are 0.

    Sort-based (Held et al. 1974; Duchi et al. 2008), masked and without host syncs; all absent: all 0.
    """
    t = v.shape[0]
    k = present.sum()
    u = torch.sort(torch.where(present, v, torch.full_like(v, -torch.inf)), descending=True).values
    index = torch.arange(1, t + 1, device=v.device, dtype=v.dtype)
    valid = index <= k
    u = torch.where(valid, u, torch.zeros_like(u))
    css = torch.cumsum(u, 0)
    condition = valid & (u * index > css - 1)
    rho = (condition.to(v.dtype) * index).amax().clamp_min(1)  # the largest j with u_j > (Σ_{i≤j} u_i − 1)/j
    theta = (css.gather(0, (rho - 1).long().reshape(1)) - 1) / rho
    return torch.where(present, (v - theta).clamp_min(0), torch.zeros_like(v))


class MoCoOptions(GradientOptions):
    beta: float = Field(default=0.5, gt=0, le=1)
    beta_sigma: float = Field(default=0.5, ge=0)
    gamma: float = Field(default=0.1, gt=0)
    gamma_sigma: float = Field(default=0.5, ge=0)
    rho: float = Field(default=0.0, ge=0)
    normalize: bool = True
    weight_update: Literal["projection", "softmax"] = "projection"
    sparse_tables: Literal["outside"] = "outside"  # Y tracks fixed columns (see the module docstring)


@BALANCERS.register("moco")
class MoCo(GradientBalancer):
    Options = MoCoOptions
    options: MoCoOptions
    lambd: Tensor
    step: Tensor

    def __init__(self, task_names: Sequence[str], options: MoCoOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        t = len(self.task_names)
        self.register_buffer("lambd", torch.full((t,), 1.0 / t))
        self.register_buffer("step", torch.zeros(()))
        self.tracked: Tensor | None = None  # Y, (T, n): created at the first step, saved as extra state

    def aggregate(self, jacobian: Tensor, present: Tensor) -> Tensor:
        o = self.options
        step = self.step.to(jacobian) + 1
        self.step.copy_(step)
        h = jacobian
        if o.normalize:
            losses = self.step_objectives.to(jacobian)
            h = jacobian / (jacobian.norm(dim=1, keepdim=True) + 1e-8) * losses[:, None]
        if self.tracked is None or self.tracked.shape != jacobian.shape:
            self.tracked = torch.zeros_like(jacobian)
        y = self.tracked.to(jacobian)
        beta = o.beta / step ** o.beta_sigma
        y = torch.where(present[:, None], y - beta * (y - h), y)
        self.tracked = y.detach()
        gamma = o.gamma / step ** o.gamma_sigma
        mask = present.to(jacobian)
        y_present = y * mask[:, None]
        lambd = self.lambd.to(jacobian) * mask
        lambd = lambd / lambd.sum().clamp_min(1e-30)
        lambd = torch.where(present & (lambd.sum() == 0), mask / mask.sum().clamp_min(1), lambd)
        step_direction = (y_present @ y_present.T + o.rho * torch.eye(len(mask), dtype=y.dtype, device=y.device)) @ lambd
        moved = lambd - gamma * step_direction
        if o.weight_update == "projection":
            new = project_simplex(moved, present)
        else:
            new = torch.where(present, moved, torch.full_like(moved, -torch.inf))
            new = torch.where(present, torch.softmax(new, 0), torch.zeros_like(moved)).nan_to_num(0.0)
        # Absent tasks keep their λ; the present ones share the mass they had.
        kept = (self.lambd.to(jacobian) * mask).sum()
        self.lambd.copy_(torch.where(present, new * torch.where(kept > 0, kept, torch.ones_like(kept)), self.lambd.to(jacobian)))
        self.last_weights = new.detach()
        return new @ y_present

    def get_extra_state(self) -> Any:
        return {"tracked": self.tracked}

    def set_extra_state(self, state: Any) -> None:
        self.tracked = state.get("tracked") if state else None


__all__ = ["MoCo", "MoCoOptions", "project_simplex"]
