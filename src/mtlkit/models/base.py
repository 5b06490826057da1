"""The backbone interface: encoded input in, one representation per task out.

A backbone decides what is shared between tasks (nothing, a bottom MLP, experts and gates…).
It never sees labels, losses or the balancer. Each backbone declares an ``Options`` model —
its hyper-parameters, validated before any work starts — and registers under a name:

    @BACKBONES.register("my_backbone")
    class MyBackbone(Backbone):
        class Options(BackboneOptions):
            width: int = 64
        ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mtlkit.registry import Registry


class BackboneOptions(BaseModel):
    """Hyper-parameters of a backbone; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Backbone(nn.Module):
    Options: ClassVar[type[BackboneOptions]] = BackboneOptions
    #: True when every task gets its own copy of the whole network, inputs included.
    independent_tasks: ClassVar[bool] = False

    def __init__(self, input_dim: int, task_names: Sequence[str], options: BackboneOptions) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.task_names = list(task_names)
        self.options = options
        self.output_dim = input_dim

    #: The tensor every task reads, kept at each forward with gradients by backbones that have one
    #: (MoE expert outputs); representation-level balancers (MGDA-UB) differentiate it.
    last_shared_features: Tensor | None = None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, input_dim)`` → ``{task: (B, output_dim)}``."""
        raise NotImplementedError

    # -- optional hooks: defaults for a backbone without them ------------------------------------
    def regularization_loss(self) -> Tensor | None:
        """A penalty on the backbone's parameters added to the training loss (SNR's λ·E[L0])."""
        return None

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{gate: (B, experts)}`` mixture weights on ``x``, as ``forward`` uses them; empty without gates."""
        return {}

    def gate_experts(self) -> dict[str, list[str]]:
        """The experts each gate mixes, in the order of :meth:`gate_weights`' columns."""
        return {}


BACKBONES: Registry[type[Backbone]] = Registry("backbone")
