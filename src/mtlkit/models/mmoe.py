"""OMoE and MMoE: one-gate and multi-gate mixture of experts (Ma et al., "Modeling Task Relationships
in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018).

``n`` identical expert MLPs ``f_i`` read the input. OMoE (Eq. 5) mixes them with one gate shared
by every task, ``y_k = h^k(Σ_i g(x)_i f_i(x))``; MMoE (Eq. 6–8) gives each task ``k`` its own
gate ``g^k(x) = softmax(W_gk x)``, so ``f^k(x) = Σ_i g^k(x)_i f_i(x)``. The towers ``h^k`` belong
to the model. The experts are one batched op (:class:`mtlkit.nn.experts.ExpertBank`), all
gates one map (:class:`mtlkit.nn.gates.Gates`), and since both read the same input, the experts'
first layer and every gate run as one GEMM (:func:`mtlkit.nn.experts.shared_input_linears`); ``gate="dselect_k"`` swaps the softmax for
the sparse DSelect-k gate, ``gate_dropout`` adds the gate dropout of Zhao et al. (2019).

Example:
    >>> import torch
    >>> bb = MMoE(10, ["click", "like"], MMoE.Options(experts=3, expert_hidden=[8]))
    >>> {k: v.shape for k, v in bb(torch.zeros(2, 10)).items()}
    {'click': torch.Size([2, 8]), 'like': torch.Size([2, 8])}
    >>> {k: v.shape for k, v in bb.gate_weights(torch.zeros(2, 10)).items()}
    {'click': torch.Size([2, 3]), 'like': torch.Size([2, 3])}
    >>> list(OMoE(10, ["click", "like"], OMoE.Options(experts=3)).gate_weights(torch.zeros(1, 10)))
    ['shared']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.nn.experts import ExpertBank, mix, shared_input_linears
from mtlkit.nn.gates import Gates
from mtlkit.nn.mlp import MLP
from mtlkit.nn.vocabulary_affine import FactoredInput


class ExpertGateOptions(BackboneOptions):
    """Options every expert/gate backbone shares: the expert MLP shape and the gate kind."""

    expert_hidden: list[int] = Field(default_factory=lambda: [64], min_length=1)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    gate: Literal["softmax", "dselect_k"] = "softmax"
    k: int = Field(default=2, ge=1, description="dselect_k: number of single-expert selectors")
    gamma: float = Field(default=1.0, gt=0.0, description="dselect_k: width of the smooth-step")
    gate_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = Field(default=False, description="BatchNorm after each expert layer (per expert, per unit)")


class MoEOptions(ExpertGateOptions):
    experts: int = Field(default=4, ge=1)


def make_gates(options: ExpertGateOptions, input_dim: int, n_gates: int, n_experts: int) -> Gates:
    return Gates(input_dim, n_gates, n_experts, options.gate, options.k, options.gamma, options.gate_dropout)


class MixtureOfExperts(Backbone):
    """Experts on (an optional bottom over) the input, mixed by one gate per name in ``gate_names``."""

    Options: ClassVar[type[MoEOptions]] = MoEOptions

    def __init__(self, input_dim: int, task_names: Sequence[str], options: MoEOptions) -> None:
        super().__init__(input_dim, task_names, options)
        self.bottom, width = self._make_bottom(input_dim, options)
        self.gate_names = self._make_gate_names()
        self.experts = ExpertBank(options.experts, width, options.expert_hidden, options.activation, options.dropout,
                                  options.batch_norm)
        self.gates = make_gates(options, width, len(self.gate_names), options.experts)
        self.output_dim = self.experts.output_dim

    def _make_bottom(self, input_dim: int, options: MoEOptions) -> tuple[nn.Module, int]:
        return nn.Identity(), input_dim

    def _make_gate_names(self) -> list[str]:
        return list(self.task_names)

    def takes_factored_input(self) -> bool:
        return isinstance(self.bottom, nn.Identity) or (isinstance(self.bottom, MLP) and self.bottom.takes_factored_input())

    def forward(self, x: Tensor | FactoredInput) -> dict[str, Tensor]:
        h = self.bottom(x)
        constant = self.constant_input if isinstance(self.bottom, nn.Identity) else None
        first, logits = shared_input_linears(h, [self.experts.first_layer, self.gates.linear], constant)
        experts = self.experts.from_first_layer(first)
        if torch.is_grad_enabled():  # what every task reads: the representation MGDA-UB differentiates
            self.last_shared_features = experts
        fused = mix(self.gates.from_logits(logits), experts)  # (B, gates, d)
        return {name: fused[:, self._gate_of(i)] for i, name in enumerate(self.task_names)}

    def _gate_of(self, task_index: int) -> int:
        return task_index if len(self.gate_names) > 1 else 0

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{gate: (B, experts)}`` as used by ``forward`` in the current mode (dropout only when training)."""
        weights = self.gates(self.bottom(x))
        return {name: weights[:, g] for g, name in enumerate(self.gate_names)}

    def gate_experts(self) -> dict[str, list[str]]:
        """The experts each gate mixes, in the order of :meth:`gate_weights`' columns."""
        labels = [f"expert{e}" for e in range(self.experts.n_experts)]
        return {name: labels for name in self.gate_names}


@BACKBONES.register("mmoe")
class MMoE(MixtureOfExperts):
    """Multi-gate MoE: one gate per task (Ma et al. 2018, Eq. 6–8)."""


@BACKBONES.register("omoe")
class OMoE(MixtureOfExperts):
    """One-gate MoE: a single gate shared by all tasks (Ma et al. 2018, Eq. 5)."""

    def _make_gate_names(self) -> list[str]:
        return ["shared"]


__all__ = ["ExpertGateOptions", "MMoE", "MixtureOfExperts", "MoEOptions", "OMoE", "make_gates"]
