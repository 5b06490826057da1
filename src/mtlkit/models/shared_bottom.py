"""Shared-bottom: hard parameter sharing (Caruana, Machine Learning 1997).

One bottom MLP is shared by every task; each task's tower (owned by the model) reads the same
representation: ``h = f(x)``, ``y_k = tower_k(h)``.

Example:
    >>> import torch
    >>> bb = SharedBottom(10, ["a", "b"], SharedBottom.Options(hidden=[16]))
    >>> {k: v.shape for k, v in bb(torch.zeros(1, 10)).items()}
    {'a': torch.Size([1, 16]), 'b': torch.Size([1, 16])}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field
from torch import Tensor

from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.nn import MLP
from mtlkit.nn.vocabulary_affine import FactoredInput


class MLPOptions(BackboneOptions):
    hidden: list[int] = Field(default_factory=lambda: [128], min_length=1)
    activation: Literal["relu", "gelu", "silu", "tanh", "prelu"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False


@BACKBONES.register("shared_bottom")
class SharedBottom(Backbone):
    Options = MLPOptions

    def __init__(self, input_dim: int, task_names: Sequence[str], options: MLPOptions) -> None:
        super().__init__(input_dim, task_names, options)
        self.bottom = MLP(input_dim, options.hidden, options.activation, options.dropout, options.batch_norm)
        self.output_dim = self.bottom.output_dim

    def takes_factored_input(self) -> bool:
        return self.bottom.takes_factored_input()

    def forward(self, x: Tensor | FactoredInput) -> dict[str, Tensor]:
        shared = self.bottom(x, self.constant_input)
        return {name: shared for name in self.task_names}
