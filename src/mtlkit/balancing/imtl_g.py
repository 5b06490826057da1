"""IMTL-G: impartial multi-task learning, gradient part (Liu et al., ICLR 2021, Eq. 9), via torchjd.

Find the update ``d = Σ_k w_k g_k`` (``Σ_k w_k = 1``) whose projections onto every task's unit
gradient are equal: ``dᵀu_1 = dᵀu_k`` with ``u_k = g_k/‖g_k‖``. torchjd uses the generalisation of
Quinton & Rey (2024), ``w ∝ G⁺ diag(G)^{1/2}`` normalised to sum to 1, which equals the paper's
closed form when the gradients are linearly independent and stays defined when they are not.

Options: none beyond ``jacobian``.

Example:
    >>> import torch
    >>> b = IMTLG(["a", "b"], IMTLG.Options())
    >>> G = torch.tensor([[1.0, 0.0], [0.0, 4.0]])   # orthogonal, norms 1 and 2
    >>> w = b.weights(G, torch.tensor([True, True]))
    >>> w                                            # d = (2/3, 2/3·...): equal projections
    tensor([0.6667, 0.3333])
"""

from __future__ import annotations

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class IMTLGOptions(TorchJDOptions):
    pass


@BALANCERS.register("imtl_g")
class IMTLG(TorchJDBalancer):
    Options = IMTLGOptions
    method = "imtl_g"

    def make(self, tasks):
        return self.aggregation.IMTLGWeighting()


__all__ = ["IMTLG", "IMTLGOptions"]
