"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021, Eq. 2 / Algorithm 1), via torchjd.

Maximise the worst local improvement of any task within a ball around the mean gradient
``g_0 = (1/T) Σ_k g_k``:

    d = argmax_{‖d − g_0‖ ≤ c‖g_0‖} min_k g_kᵀd,

solved in its dual on the simplex, ``w* = argmin_w g_wᵀg_0 + √φ ‖g_w‖`` with ``g_w = Σ_k w_k g_k``
and ``√φ = c‖g_0‖``, then ``d = g_0 + (√φ / ‖g_w*‖) g_w*``. ``c = 0`` gives the mean gradient;
large ``c`` approaches MGDA. torchjd solves the dual with cvxpy/Clarabel on the (normalised)
Gramian (extra ``cagrad``).

Options: ``c`` (default 0.4, the paper's choice for multi-task supervised learning),
``norm_eps``.

Example:
    >>> import torch
    >>> b = CAGrad(["a", "b"], CAGrad.Options(c=0.0))   # c = 0: the mean gradient
    >>> b.weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([True, True]))
    tensor([0.5000, 0.5000])
"""

from __future__ import annotations

from pydantic import Field

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class CAGradOptions(TorchJDOptions):
    c: float = Field(default=0.4, ge=0)
    norm_eps: float = Field(default=1e-4, ge=0)


@BALANCERS.register("cagrad")
class CAGrad(TorchJDBalancer):
    Options = CAGradOptions
    method = "cagrad"
    extra = "cagrad"

    def make(self, tasks):
        return self.aggregation.CAGradWeighting(c=self.options.c, norm_eps=self.options.norm_eps)


__all__ = ["CAGrad", "CAGradOptions"]
