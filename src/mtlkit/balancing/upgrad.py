"""UPGrad: unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024, Eq. 5), via torchjd.

Each task gradient is projected onto the dual cone of all of them,
``π_J(g) = argmin_{v: Jv ≥ 0} ‖v − g‖²``, and the projections are averaged with the preference
weights ``p`` (uniform by default): ``d = Σ_k p_k π_J(g_k)``. Hence ``g_kᵀd ≥ 0`` for every
task (non-conflicting), and the update is linear under a positive rescaling of all gradients.
Only the Gramian is needed: each projection is the quadratic programme
``min_v vᵀGv s.t. v ≥ e_k`` (torchjd's ``QuadprogProjector``; extra ``quadprog_projector``).

Options: ``pref_vector`` (task → preference, default uniform), ``reg_eps`` (the regularisation
added to the diagonal of the trace-normalised Gramian, default 1e-10 and raised automatically if
quadprog fails; torchjd's default 1e-4 lets the update conflict — see
:mod:`mtlkit.balancing.torchjd_backend`).

Example:
    >>> import torch
    >>> b = UPGrad(["a", "b"], UPGrad.Options())
    >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])   # g1 = (1, 0), g2 = (-1, 1)
    >>> w = b.weights(G, torch.tensor([True, True]))
    >>> bool(((G @ w) >= -1e-6).all())                # g_kᵀd ≥ 0 for both tasks
    True
"""

from __future__ import annotations

from pydantic import Field

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions, call_with_regularisation


class UPGradOptions(TorchJDOptions):
    pref_vector: dict[str, float] | None = None
    reg_eps: float = Field(default=1e-10, gt=0, le=1e-4)


@BALANCERS.register("upgrad")
class UPGrad(TorchJDBalancer):
    Options = UPGradOptions
    method = "upgrad"
    extra = "quadprog_projector"
    weighting = "UPGradWeighting"  # the torchjd weighting class; DualProj differs only here

    def make(self, tasks):
        from torchjd.linalg import QuadprogProjector  # (torchjd is optional)

        projector = QuadprogProjector(norm_eps=0.0, reg_eps=self.options.reg_eps)  # G arrives normalised
        weighting = getattr(self.aggregation, self.weighting)
        return weighting(self.preference(self.options.pref_vector, tasks), projector=projector)

    def call(self, engine, stat):
        return call_with_regularisation(engine, stat, self.options.reg_eps)


__all__ = ["UPGrad", "UPGradOptions"]
