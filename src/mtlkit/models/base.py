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

from typing import ClassVar, Sequence

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

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, input_dim)`` → ``{task: (B, output_dim)}``."""
        raise NotImplementedError


BACKBONES: Registry[type[Backbone]] = Registry("backbone")
