"""MMoE with DSelect-k gates (Hazimeh et al., "DSelect-k: Differentiable Selection in the Mixture
of Experts with Applications to Multi-Task Learning", NeurIPS 2021).

Each task's gate is ``q(x) = Σ_{i=1..k} softmax(α(x))_i r(z^(i)(x))`` (per-example routing):
``k`` single-expert selectors, each a product of cubic smooth-steps over the binary code of an
expert, ``r(z)_j = Π_l S(z_l)^[bit_l(j)] (1 − S(z_l))^[1 − bit_l(j)]``, so every gate uses at most ``k`` experts once its codes saturate,
while training stays plain first-order SGD. The gate itself is
:class:`mtlkit.nn.gates.Gates` with ``kind="dselect_k"``; any expert backbone here takes
``gate="dselect_k"`` — this entry is MMoE with that gate by default.

Example:
    >>> import torch
    >>> bb = DSelectK(10, ["a", "b"], DSelectK.Options(experts=8, k=2, expert_hidden=[4]))
    >>> w = bb.gate_weights(torch.randn(3, 10))["a"]
    >>> w.shape, bool(torch.allclose(w.sum(-1), torch.ones(3)))
    (torch.Size([3, 8]), True)
"""

from __future__ import annotations

from typing import Literal

from mtlkit.models.base import BACKBONES
from mtlkit.models.mmoe import MMoE, MoEOptions


class DSelectKOptions(MoEOptions):
    gate: Literal["dselect_k"] = "dselect_k"


@BACKBONES.register("dselect_k")
class DSelectK(MMoE):
    Options = DSelectKOptions
