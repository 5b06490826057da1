"""MMoE on a shared bottom layer with gate dropout (Zhao et al., "Recommending What Video to Watch
Next: A Multitask Ranking System", RecSys 2019).

The YouTube "what to watch next" ranker puts the MMoE layer on top of a shared hidden layer
instead of the raw input, so the experts and gates read a compact representation:
``b = bottom(x)``, ``f^k(b) = Σ_i g^k(b)_i f_i(b)`` with ``g^k(b) = softmax(W_gk b)`` (MMoE, Eq. 6–8).
Against gate polarisation (a gate collapsing onto one expert) each gate weight is zeroed with
probability ``gate_dropout`` (10% in the paper) during training and the remaining weights are
renormalised to sum to one; evaluation uses the full, deterministic gate.

Example:
    >>> import torch
    >>> bb = YouTubeMMoE(10, ["watch", "like"], YouTubeMMoE.Options(bottom=[16], experts=3, expert_hidden=[8]))
    >>> bb.eval()(torch.zeros(1, 10))["watch"].shape
    torch.Size([1, 8])
    >>> bb.options.gate_dropout
    0.1
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from mtlkit.models.base import BACKBONES
from mtlkit.models.mmoe import MMoE, MoEOptions
from mtlkit.nn import MLP


class YouTubeMMoEOptions(MoEOptions):
    bottom: list[int] = Field(default_factory=lambda: [64], min_length=1)
    gate_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


@BACKBONES.register("youtube_mmoe")
class YouTubeMMoE(MMoE):
    Options = YouTubeMMoEOptions

    def _make_bottom(self, input_dim: int, options: YouTubeMMoEOptions) -> tuple[nn.Module, int]:  # type: ignore[override]
        bottom = MLP(input_dim, options.bottom, options.activation, options.dropout)
        return bottom, bottom.output_dim
