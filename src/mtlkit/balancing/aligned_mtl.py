"""Aligned-MTL: independent component alignment (Senushkin et al., CVPR 2023, Algorithm 1), via torchjd.

Eliminate the instability of the gradient system by making it well conditioned: with the
eigendecomposition ``G = V Λ Vᵀ`` of the Gramian, the aligned gradients are
``Ĵ = σ V Λ^{-1/2} Vᵀ J`` (all singular values equal to ``σ``, the smallest one by default), and
``d = Σ_k p_k ĝ_k`` with preference ``p`` (uniform by default).

Options: ``pref_vector`` (task → preference), ``scale_mode`` (``"min"``: smallest eigenvalue,
the paper; ``"median"``; ``"rmse"``: their code's mean).

Example:
    >>> import torch
    >>> b = AlignedMTL(["a", "b"], AlignedMTL.Options())
    >>> G = torch.tensor([[1.0, 0.0], [0.0, 4.0]])   # orthogonal, norms 1 and 2
    >>> b.weights(G, torch.tensor([True, True]))     # aligned: both components rescaled to norm 1
    tensor([0.5000, 0.2500])
"""

from __future__ import annotations

from typing import Literal

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class AlignedMTLOptions(TorchJDOptions):
    pref_vector: dict[str, float] | None = None
    scale_mode: Literal["min", "median", "rmse"] = "min"


@BALANCERS.register("aligned_mtl")
class AlignedMTL(TorchJDBalancer):
    Options = AlignedMTLOptions
    method = "aligned_mtl"

    def make(self, tasks):
        return self.aggregation.AlignedMTLWeighting(self.preference(self.options.pref_vector, tasks),
                                                    scale_mode=self.options.scale_mode)


__all__ = ["AlignedMTL", "AlignedMTLOptions"]
