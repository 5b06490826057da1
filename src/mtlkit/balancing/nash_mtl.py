"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022, Eq. 4 / Algorithm 1), via torchjd.

The update ``d = Σ_k α_k g_k`` is the Nash bargaining solution: ``α`` solves
``(Gα)_k = 1/α_k`` for every task (each task's directional derivative times its weight is 1),
found by torchjd's port of the official sequence of convex approximations (cvxpy/ECOS, extra
``nash_mtl``), and ``‖d‖`` is clipped to ``max_norm``. torchjd's weighting takes the Jacobian
but only uses it through ``J Jᵀ`` and ``‖αᵀJ‖``, so it is given the ``T × T`` factor ``R``
(``R Rᵀ = G``) instead: identical weights, no ``T × n`` copy to the CPU.

The solver warm-starts from the previous ``α`` (kept per set of present tasks; the full set's is
saved in checkpoints). Options: ``max_norm`` (1.0; 0 disables clipping), ``update_weights_every``
(1), ``optim_niter`` (20).

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
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class NashMTLOptions(TorchJDOptions):
    max_norm: float = Field(default=1.0, ge=0)
    update_weights_every: int = Field(default=1, ge=1)
    optim_niter: int = Field(default=20, ge=1)


@BALANCERS.register("nash_mtl")
class NashMTL(TorchJDBalancer):
    Options = NashMTLOptions
    consumes = "factor"
    scale_invariant = False  # α solves (Gα)_k = 1/α_k: it scales with G
    method = "nash_mtl"
    extra = "nash_mtl"

    def make(self, tasks):
        o = self.options
        return self.aggregation.NashMTL(n_tasks=len(tasks), max_norm=o.max_norm, update_weights_every=o.update_weights_every,
                                        optim_niter=o.optim_niter).weighting

    def solve(self, gramian, present):
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


__all__ = ["NashMTL", "NashMTLOptions"]
