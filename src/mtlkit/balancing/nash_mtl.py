"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022, Eq. 4 / Algorithm 1), via torchjd.

The update ``d = Σ_k α_k g_k`` is the Nash bargaining solution: ``α`` solves
``(Gα)_k = 1/α_k`` for every task (each task's directional derivative times its weight is 1),
found by torchjd's port of the official sequence of convex approximations (cvxpy/ECOS, extra
``nash_mtl``), and ``‖d‖`` is clipped to ``max_norm``. torchjd's weighting takes the Jacobian
but only uses it through ``J Jᵀ`` and ``‖αᵀJ‖``, so it is given the ``T × T`` factor ``R``
(``R Rᵀ = G``) instead: identical weights, no ``T × n`` copy to the CPU.

``(Gα)_k = 1/α_k`` is exactly the stationarity condition of the strictly convex
``φ(α) = ½ αᵀGα − Σ_k log α_k`` on ``α > 0``, so ``solver: newton`` (default) finds it by damped
Newton steps on ``T × T`` matrices (well under a millisecond, to machine precision);
``solver: cvxpy`` runs torchjd's port of the official sequence of convex approximations
(cvxpy/ECOS, tens of milliseconds per step). Both warm-start from the previous ``α`` (kept per set
of present tasks; the full set's is saved in checkpoints). Options: ``max_norm`` (1.0; 0 disables
clipping), ``update_weights_every`` (1), ``optim_niter`` (20, iterations of either solver).

Example:
    >>> import torch
    >>> b = NashMTL(["a", "b"], NashMTL.Options(max_norm=0.0))
    >>> G = torch.tensor([[1.0, 0.0], [0.0, 4.0]])        # orthogonal, norms 1 and 2
    >>> w = b.weights(G, torch.tensor([True, True]))
    >>> [round(float(x), 3) for x in w * (G @ w)]         # α_k (Gα)_k = 1 for both tasks
    [1.0, 1.0]
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class NashMTLOptions(TorchJDOptions):
    max_norm: float = Field(default=1.0, ge=0)
    update_weights_every: int = Field(default=1, ge=1)
    optim_niter: int = Field(default=20, ge=1)
    solver: Literal["newton", "cvxpy"] = "newton"


class NewtonBargaining:
    """The Nash bargaining weights ``α ⊙ (Gα) = 1`` by damped Newton on ``½αᵀGα − Σ log α``.

    Called like torchjd's weighting on a factor ``R`` (``G = R Rᵀ``); keeps ``prvs_alpha`` as the
    warm start and applies the same ``max_norm`` clipping of ``‖αᵀR‖``.
    """

    def __init__(self, n_tasks: int, max_norm: float, update_weights_every: int, optim_niter: int) -> None:
        self.max_norm, self.every, self.iterations = max_norm, update_weights_every, max(optim_niter, 20)
        self.prvs_alpha = np.ones(n_tasks)
        self.step = 0

    def solve(self, g: np.ndarray) -> np.ndarray:
        alpha = self.prvs_alpha.astype(np.float64).copy()
        if not np.all(np.isfinite(alpha)) or np.any(alpha <= 0):
            alpha = np.ones(len(g))

        def phi(a):
            return 0.5 * a @ g @ a - np.log(a).sum()

        for _ in range(self.iterations):
            gradient = g @ alpha - 1.0 / alpha
            if np.abs(alpha * (g @ alpha) - 1.0).max() < 1e-10:
                break
            hessian = g + np.diag(1.0 / alpha**2)
            direction = -np.linalg.solve(hessian, gradient)
            step, current = 1.0, phi(alpha)
            while step > 1e-12:  # backtracking: stay positive and decrease φ (Armijo)
                candidate = alpha + step * direction
                if np.all(candidate > 0) and phi(candidate) <= current + 1e-4 * step * gradient @ direction:
                    break
                step *= 0.5
            alpha = candidate
        return alpha

    def __call__(self, factor: Tensor) -> Tensor:
        r = factor.cpu().numpy().astype(np.float64)
        if self.step % self.every == 0:
            self.prvs_alpha = self.solve(r @ r.T)
        self.step += 1
        alpha = torch.from_numpy(self.prvs_alpha.copy())
        if self.max_norm > 0:
            norm = float(np.linalg.norm(self.prvs_alpha @ r))
            if norm > self.max_norm:
                alpha = alpha / norm * self.max_norm
        return alpha


@BALANCERS.register("nash_mtl")
class NashMTL(TorchJDBalancer):
    Options = NashMTLOptions
    consumes = "factor"
    scale_invariant = False  # α solves (Gα)_k = 1/α_k: it scales with G
    method = "nash_mtl"
    extra = "nash_mtl"

    def make(self, tasks):
        o = self.options
        if o.solver == "newton":
            return NewtonBargaining(len(tasks), o.max_norm, o.update_weights_every, o.optim_niter)
        return self.aggregation.NashMTL(n_tasks=len(tasks), max_norm=o.max_norm, update_weights_every=o.update_weights_every,
                                        optim_niter=o.optim_niter).weighting

    def solve(self, gramian, present):
        if self.options.solver == "newton":
            return super().solve(gramian, present)
        with warnings.catch_warnings():  # torchjd's problem is not DPP; cvxpy warns at every rebuild
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            return super().solve(gramian, present)

    def get_extra_state(self) -> Any:
        full = self.engine(tuple(range(len(self.task_names))))
        return {"prvs_alpha": torch.as_tensor(np.asarray(full.prvs_alpha, dtype=np.float64))}

    def set_extra_state(self, state: Any) -> None:
        # The warm start only; the solver's problem is rebuilt at the next step.
        if state and "prvs_alpha" in state:
            self.engine(tuple(range(len(self.task_names)))).prvs_alpha = state["prvs_alpha"].cpu().numpy()


__all__ = ["NashMTL", "NashMTLOptions", "NewtonBargaining"]
