"""MGDA: multi-task learning as multi-objective optimisation (Sener & Koltun, NeurIPS 2018).

The shared update is the minimum-norm point of the convex hull of the task gradients (Eq. 3):

    α* = argmin_{α ∈ Δ_T} ‖Σ_k α_k g_k‖²,   d = Σ_k α*_k g_k,   g_k = ∇_{θ_sh} (λ_k L_k)

so that ``g_kᵀd ≥ ‖d‖² ≥ 0`` for every task: the step never increases any task's loss to first
order (``d = 0`` at a Pareto-stationary point). Only the ``T × T`` Gramian ``G = J Jᵀ`` is needed.

* Two tasks — the closed form of Algorithm 1, with its two clamping cases:
  ``γ = 1`` if ``g1ᵀg2 ≥ g1ᵀg1``; ``γ = 0`` if ``g1ᵀg2 ≥ g2ᵀg2``;
  else ``γ = (g2 − g1)ᵀg2 / ‖g1 − g2‖²``; ``α = (γ, 1 − γ)``.
* More tasks — ``solver="frank_wolfe"``: Algorithm 2 from the uniform point, each step towards
  the vertex ``argmin_t (Gα)_t`` with the exact line search of Algorithm 1, for a fixed
  ``max_iter`` steps (no data-dependent stopping, so no host sync);
  ``solver="exact"``: the exact minimiser, by solving the KKT system of every support set at once
  (``2^T − 1`` small systems in one batched ``solve_ex``; for ``T ≤ 12``).
  ``solver="auto"`` (default) uses ``exact`` up to 12 tasks and Frank-Wolfe beyond. Measured on
  100 random problems per T: 100 Frank-Wolfe steps leave a median objective gap of 2 % (worst
  28 %) at T = 5 and 12 % (worst 470 %) at T = 8, and cost ~4 ms on 2 CPU threads; the exact
  solve costs ~0.5 ms and leaves none.

``normalize`` rescales each gradient before solving (Sener & Koltun's code, §A): ``"l2"`` by
``‖g_k‖``, ``"loss"`` by ``f_k``, ``"loss+"`` by ``f_k·‖g_k‖``; the weights are mapped back, so the
update is still a non-negative combination of the raw gradients and still conflicts with none.
Towers get the gradient of their own task's ``λ_k L_k`` (Algorithm 2, line 3).
For the representation-level variant see :mod:`mtlkit.balancing.mgda_ub`.

Example:
    >>> import torch
    >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])      # g1 = (1, 0), g2 = (-1, 1)
    >>> min_norm_weights(G, torch.tensor([True, True]))
    tensor([0.6000, 0.4000])
    >>> min_norm_weights(torch.tensor([[1.0, 2.0], [2.0, 4.0]]), torch.tensor([True, True]))  # g2 = 2·g1
    tensor([1., 0.])
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.gradient import GradientOptions, GramianBalancer


class MGDAOptions(GradientOptions):
    normalize: Literal["none", "l2", "loss", "loss+"] = "none"
    solver: Literal["auto", "exact", "frank_wolfe"] = "auto"
    max_iter: int = Field(default=100, ge=1)  # Frank-Wolfe steps


def min_norm_two(g11: Tensor, g12: Tensor, g22: Tensor) -> Tensor:
    """Weight ``γ`` of the first vector in ``argmin_γ ‖γ g1 + (1 − γ) g2‖²`` (Algorithm 1)."""
    gamma = ((g22 - g12) / (g11 + g22 - 2 * g12).clamp_min(torch.finfo(g11.dtype).tiny)).clamp(0, 1)
    gamma = torch.where(g12 >= g22, torch.zeros_like(gamma), gamma)
    return torch.where(g12 >= g11, torch.ones_like(gamma), gamma)


def frank_wolfe(gramian: Tensor, present: Tensor, max_iter: int) -> Tensor:
    """Algorithm 2 of Sener & Koltun on the Gramian, restricted to the ``present`` tasks."""
    p = present.to(gramian.dtype)
    alpha = p / p.sum().clamp_min(1)
    eye = torch.eye(len(p), dtype=gramian.dtype, device=gramian.device)
    blocked = torch.where(present, torch.zeros_like(p), torch.full_like(p, torch.inf))
    for _ in range(max_iter):
        g_alpha = gramian @ alpha
        e = eye[torch.argmin(g_alpha + blocked)]
        a, b, c = alpha @ g_alpha, e @ g_alpha, e @ gramian @ e
        # Algorithm 1 with θ = current point (weight 1 − step), θ̄ = vertex (weight step).
        step = 1 - min_norm_two(a, b, c)
        alpha = alpha + step * (e - alpha)
    return alpha * p


_SUBSETS: dict[tuple[int, str], Tensor] = {}


def exact_min_norm(gramian: Tensor, present: Tensor) -> Tensor:
    """The exact minimiser: the best feasible KKT solution over every support set (``T ≤ 12``)."""
    t = gramian.shape[0]
    if t > 12:
        raise ValueError("the exact min-norm solver enumerates 2^T support sets; use frank_wolfe for T > 12")
    key = (t, str(gramian.device))
    if key not in _SUBSETS:  # built once per (T, device): no host-to-device copy per step
        _SUBSETS[key] = torch.tensor([[i in s for i in range(t)] for r in range(1, t + 1)
                                      for s in itertools.combinations(range(t), r)], device=gramian.device)
    subsets = _SUBSETS[key]
    g = gramian.double()
    ridge = 1e-12 * g.diagonal().mean().clamp_min(0) + 1e-30
    pair = subsets[:, :, None] & subsets[:, None, :]
    matrix = torch.where(pair, g, 0.0) + torch.diag_embed(torch.where(subsets, ridge, 1.0))
    solution, _ = torch.linalg.solve_ex(matrix, subsets.double())
    total = solution.sum(1, keepdim=True)
    w = solution / total.clamp_min(1e-300)
    valid = ~(subsets & ~present).any(1)
    feasible = valid & (total[:, 0] > 0) & (w >= -1e-9).all(1)
    objective = torch.where(feasible, torch.einsum("ki,ij,kj->k", w, g, w), torch.inf)
    best = w[torch.argmin(objective)].clamp_min(0)
    best = best / best.sum().clamp_min(1e-300)
    return torch.where(present.any(), best, torch.zeros_like(best)).to(gramian.dtype)


def min_norm_weights(gramian: Tensor, present: Tensor, solver: str = "auto", max_iter: int = 100) -> Tensor:
    """``α ∈ Δ`` minimising ``αᵀGα`` over the present tasks (absent ones get 0)."""
    t = gramian.shape[0]
    p = present.to(gramian.dtype)
    if t == 1:
        return p
    if t == 2:
        gamma = min_norm_two(gramian[0, 0], gramian[0, 1], gramian[1, 1])
        return torch.where(present.all(), torch.stack([gamma, 1 - gamma]), p)
    if solver == "exact" or (solver == "auto" and t <= 12):
        return exact_min_norm(gramian, present)
    return frank_wolfe(gramian, present, max_iter)


def normalizers(gramian: Tensor, objectives: Tensor, present: Tensor, mode: str) -> Tensor:
    """Per-task scale ``n_k`` of Sener & Koltun's gradient normalisation (1 for absent tasks)."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    if mode == "l2":
        n = norms
    elif mode == "loss":
        n = objectives.abs()
    elif mode == "loss+":
        n = objectives.abs() * norms
    else:
        return torch.ones_like(norms)
    return torch.where(present & (n > 0), n, torch.ones_like(n))


@BALANCERS.register("mgda")
class MGDA(GramianBalancer):
    Options = MGDAOptions
    options: MGDAOptions

    def __init__(self, task_names: Sequence[str], options: MGDAOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)

    def weights(self, gramian: Tensor, present: Tensor) -> Tensor:
        o = self.options
        n = normalizers(gramian, self.step_objectives.to(gramian), present, o.normalize)
        alpha = min_norm_weights(gramian / (n[:, None] * n[None, :]), present, o.solver, o.max_iter)
        return alpha / n


__all__ = ["MGDA", "MGDAOptions", "exact_min_norm", "frank_wolfe", "min_norm_two", "min_norm_weights", "normalizers"]
