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

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.upgrad import UPGrad, UPGradOptions


class DualProjOptions(UPGradOptions):
    pass


@BALANCERS.register("dualproj")
class DualProj(UPGrad):
    """Same projector and regularisation as UPGrad; only torchjd's weighting class differs."""

    Options = DualProjOptions
    method = "dualproj"
    weighting = "DualProjWeighting"


__all__ = ["DualProj", "DualProjOptions"]
