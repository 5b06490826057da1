"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021, Eq. 2 / Algorithm 1), via torchjd.

Maximise the worst local improvement of any task within a ball around the mean gradient
``g_0 = (1/T) Σ_k g_k``:

    d = argmax_{‖d − g_0‖ ≤ c‖g_0‖} min_k g_kᵀd,

solved in its dual on the simplex, ``w* = argmin_w g_wᵀg_0 + √φ ‖g_w‖`` with ``g_w = Σ_k w_k g_k``
and ``√φ = c‖g_0‖``, then ``d = g_0 + (√φ / ‖g_w*‖) g_w*``. ``c = 0`` gives the mean gradient;
large ``c`` approaches MGDA. torchjd solves the dual with cvxpy/Clarabel on the (normalised)
Gramian (extra ``cagrad``).

Options: ``c`` (default 0.4, the paper's choice for multi-task supervised learning),
``norm_eps``, ``solver``. The dual is a ``T``-dimensional problem; ``solver: slsqp`` (default)
solves it with SciPy's SLSQP as the official CAGrad code does (about 1 ms), ``solver: cvxpy``
with torchjd's cvxpy/Clarabel formulation (about 20× slower per step, the same weights to ~1e-4).

Example:
    >>> import torch
    >>> b = CAGrad(["a", "b"], CAGrad.Options(c=0.0))   # c = 0: the mean gradient
    >>> b.weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([True, True]))
    tensor([0.5000, 0.5000])
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class CAGradOptions(TorchJDOptions):
    c: float = Field(default=0.4, ge=0)
    norm_eps: float = Field(default=1e-4, ge=0)
    solver: Literal["slsqp", "cvxpy"] = "slsqp"


class SLSQPDual:
    """CAGrad's dual on a (trace-normalised) Gramian ``N``, solved with SciPy's SLSQP.

    ``min_{w ∈ Δ} wᵀ N 1/T + √φ ‖g_w‖`` with ``‖g_w‖² = wᵀ N w`` and ``√φ = c ‖g_0‖``; returns
    the weights ``1/T + (√φ / ‖g_w*‖) w*`` of ``d = Σ_k weight_k g_k`` — torchjd's formula.
    """

    def __init__(self, c: float, norm_eps: float) -> None:
        self.c, self.norm_eps = c, norm_eps

    def __call__(self, gramian: Tensor) -> Tensor:
        from scipy.optimize import minimize

        n = gramian.cpu().numpy().astype(np.float64)
        t = n.shape[0]
        if np.trace(n) < self.norm_eps:
            return torch.zeros(t, dtype=torch.float64)
        mean = np.full(t, 1.0 / t)
        sqrt_phi = self.c * float(np.sqrt(max(mean @ n @ mean, 0.0)))
        linear = n @ mean

        def objective(w):
            return float(w @ linear + sqrt_phi * np.sqrt(max(w @ n @ w, 0.0) + 1e-12))

        def gradient(w):
            norm = np.sqrt(max(w @ n @ w, 0.0) + 1e-12)
            return linear + sqrt_phi * (n @ w) / norm

        result = minimize(objective, mean, jac=gradient, method="SLSQP", bounds=[(0.0, 1.0)] * t,
                          constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
                          options={"ftol": 1e-12, "maxiter": 200})
        w = np.clip(result.x, 0.0, None)
        w /= w.sum()
        g_w_norm = float(np.sqrt(max(w @ n @ w, 0.0)))
        weights = mean + (sqrt_phi / g_w_norm) * w if g_w_norm >= self.norm_eps else np.zeros(t)
        return torch.from_numpy(weights)


@BALANCERS.register("cagrad")
class CAGrad(TorchJDBalancer):
    Options = CAGradOptions
    method = "cagrad"
    extra = "cagrad"

    def make(self, tasks):
        if self.options.solver == "slsqp":
            return SLSQPDual(self.options.c, self.options.norm_eps)
        return self.aggregation.CAGradWeighting(c=self.options.c, norm_eps=self.options.norm_eps)


__all__ = ["CAGrad", "CAGradOptions", "SLSQPDual"]
