"""Cross-stitch networks for tabular input (Misra et al., "Cross-stitch Networks for Multi-task
Learning", CVPR 2016).

Every task has its own MLP column; after each layer a cross-stitch unit linearly recombines the
columns' activations with a learned task × task matrix (Eq. 1, generalised from two tasks):
``x̃^t = Σ_s α_ts x^s``. The matrix starts near the identity, ``α_tt = alpha_self`` and
``α_ts = (1 − alpha_self)/(K − 1)`` (the paper's 0.9 / 0.1 initialisation for two tasks), so the
columns begin almost independent and learn how much to share. All columns of a layer are one
batched op (:class:`mtlkit.nn.experts.BatchedLinear`) and each stitch one ``einsum``.

Example:
    >>> import torch
    >>> bb = CrossStitch(10, ["a", "b"], CrossStitch.Options(hidden=[16, 8]))
    >>> {k: v.shape for k, v in bb(torch.zeros(1, 10)).items()}
    {'a': torch.Size([1, 8]), 'b': torch.Size([1, 8])}
    >>> bb.stitches[0].detach()
    tensor([[0.9000, 0.1000],
            [0.1000, 0.9000]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.nn.experts import EXPERT_ACTIVATIONS, BatchedLinear


class CrossStitchOptions(BackboneOptions):
    hidden: list[int] = Field(default_factory=lambda: [64, 32], min_length=1)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    alpha_self: float = Field(default=0.9, ge=0.0, le=1.0, description="initial weight of a column on itself")


@BACKBONES.register("cross_stitch")
class CrossStitch(Backbone):
    Options = CrossStitchOptions

    def __init__(self, input_dim: int, task_names: Sequence[str], options: CrossStitchOptions) -> None:
        super().__init__(input_dim, task_names, options)
        n = len(self.task_names)
        widths = [input_dim, *options.hidden]
        self.columns = nn.ModuleList(BatchedLinear(n, a, b) for a, b in zip(widths[:-1], widths[1:]))
        other = (1.0 - options.alpha_self) / (n - 1) if n > 1 else 0.0
        init = torch.full((n, n), other).fill_diagonal_(options.alpha_self if n > 1 else 1.0)
        self.stitches = nn.ParameterList(nn.Parameter(init.clone()) for _ in options.hidden)
        self.activation = EXPERT_ACTIVATIONS[options.activation]()
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.output_dim = widths[-1]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = x
        for layer, alpha in zip(self.columns, self.stitches):
            h = self.dropout(self.activation(layer(h)))  # (B, K, d): every column, one op
            h = torch.einsum("ts,bsd->btd", alpha, h)  # cross-stitch unit
        return {name: h[:, t] for t, name in enumerate(self.task_names)}
