"""DualProj: projection of the averaged gradient onto the dual cone (Quinton & Rey, "Jacobian
Descent for Multi-Objective Optimization", 2024, §4), via torchjd.

``d = π_J(Σ_k p_k g_k)`` with ``π_J(g) = argmin_{v: Jv ≥ 0} ‖v − g‖²``: the (preference-weighted)
mean gradient, minimally changed so that it conflicts with no task (``g_kᵀd ≥ 0``). One
quadratic programme on the Gramian per step (extra ``quadprog_projector``).

Options: ``pref_vector`` (task → preference, default uniform), ``reg_eps`` (default 1e-10, see
:mod:`mtlkit.balancing.upgrad`).

Example:
    >>> import torch
    >>> b = DualProj(["a", "b"], DualProj.Options())
    >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])
    >>> bool(((G @ b.weights(G, torch.tensor([True, True]))) >= -1e-6).all())
    True
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions, call_with_regularisation


class DualProjOptions(TorchJDOptions):
    pref_vector: Optional[dict[str, float]] = None
    reg_eps: float = Field(default=1e-10, gt=0, le=1e-4)


@BALANCERS.register("dualproj")
class DualProj(TorchJDBalancer):
    Options = DualProjOptions
    method = "dualproj"
    extra = "quadprog_projector"

    def make(self, tasks):
        from torchjd.linalg import QuadprogProjector  # noqa: PLC0415 (torchjd is optional)

        projector = QuadprogProjector(norm_eps=0.0, reg_eps=self.options.reg_eps)  # G arrives normalised
        return self.aggregation.DualProjWeighting(self.preference(self.options.pref_vector, tasks), projector=projector)

    def call(self, engine, stat):
        return call_with_regularisation(engine, stat, self.options.reg_eps)


__all__ = ["DualProj", "DualProjOptions"]
