"""PCGrad: gradient surgery (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020,
Algorithm 1), via torchjd.

For each task ``i``, in a random order over the other tasks ``j``: if ``g_iᵀg_j < 0`` replace
``g_i ← g_i − (g_iᵀg_j / ‖g_j‖²) g_j`` (project away the conflicting component); the update is
``d = Σ_i g_i``. Computed on the Gramian only (``d = wᵀJ``). With two tasks the result does not
depend on the order and never conflicts with either gradient (``g_kᵀd = ‖g_k‖²(1 − cos²) ≥ 0``);
with more tasks the order is drawn from torch's global RNG (seed it for reproducibility).

Options: none beyond ``jacobian``.

Example:
    >>> import torch
    >>> b = PCGrad(["a", "b"], PCGrad.Options())
    >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])   # g1 = (1, 0), g2 = (-1, 1)
    >>> w = b.weights(G, torch.tensor([True, True]))
    >>> w, G @ w            # g1' = (½, ½), g2' = (0, 1), d = (½, 3/2): g1ᵀd = ½, g2ᵀd = 1
    (tensor([2.0000, 1.5000]), tensor([0.5000, 1.0000]))
"""

from __future__ import annotations

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class PCGradOptions(TorchJDOptions):
    pass


@BALANCERS.register("pcgrad")
class PCGrad(TorchJDBalancer):
    Options = PCGradOptions
    method = "pcgrad"

    def make(self, tasks):
        return self.aggregation.PCGradWeighting()


__all__ = ["PCGrad", "PCGradOptions"]
