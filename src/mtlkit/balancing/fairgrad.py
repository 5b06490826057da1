"""FairGrad: fair resource allocation in multi-task learning (Ban & Ji, ICML 2024, Eq. 4 /
Algorithm 1), via torchjd.

FairGrad chooses the update ``d = Σ_k w_k g_k`` whose per-task improvements ``g_kᵀd = (Gw)_k``
maximise the α-fair utility ``Σ_k (g_kᵀd)^{1−α}/(1−α)``; its optimality condition is

    G w = w^{−1/α}   (element-wise, w > 0)                                    (Eq. 4)

solved by torchjd's ``FairGradWeighting`` (non-negative least squares with SciPy, extra
``fairgrad``; adapted from the official code). ``α = 0`` is equal weighting, ``α = 1`` the
proportional fairness of Nash-MTL, ``α → ∞`` max-min fairness. The weights scale with ``G``
(not scale-invariant), so the solver gets the raw ``T × T`` Gramian of the present tasks.

Options: ``alpha`` (α ≥ 0, default 1.0 as LibMTL 1.1.5's ``FairGrad_alpha``), ``max_iters``
(SciPy's ``max_nfev``; ``null`` = SciPy's default ``100·T``).

Example:
    >>> import torch
    >>> b = FairGrad(["a", "b"], FairGrad.Options(alpha=1.0))
    >>> G = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> w = b.weights(G, torch.tensor([True, True]))
    >>> [round(float(x), 3) for x in (G @ w) * w]              # α = 1: (Gw)_k = 1/w_k
    [1.0, 1.0]
"""

from __future__ import annotations

from pydantic import Field

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class FairGradOptions(TorchJDOptions):
    alpha: float = Field(default=1.0, ge=0)
    max_iters: int | None = Field(default=None, ge=1)


@BALANCERS.register("fairgrad")
class FairGrad(TorchJDBalancer):
    Options = FairGradOptions
    method = "fairgrad"
    extra = "fairgrad"
    scale_invariant = False  # Gw = w^(−1/α): w scales with G

    def make(self, tasks):
        return self.aggregation.FairGradWeighting(alpha=self.options.alpha, max_iters=self.options.max_iters)


__all__ = ["FairGrad", "FairGradOptions"]
