"""A bank of identical expert MLPs evaluated as one batched op over stacked weights.

Mixture-of-experts backbones (MMoE, Ma et al. KDD 2018, Eq. 5: ``f_i(x)``; PLE, Tang et al.
RecSys 2020, Eq. 2) apply ``E`` experts of the same shape. Instead of a Python list of ``E`` MLPs,
each layer holds one ``(E, in, out)`` weight: the first layer of experts that share an input is a
single ``(in, E·out)`` matmul, and experts that each read their own input (PLE from level 2, SNR)
are one ``bmm`` over the expert axis. Maps that read the same input (an MoE's experts and its
gates) can run as one GEMM together: :func:`shared_input_linears`.

Example:
    >>> import torch
    >>> bank = ExpertBank(4, input_dim=10, hidden=[16, 8])
    >>> bank(torch.zeros(3, 10)).shape           # one input shared by every expert
    torch.Size([3, 4, 8])
    >>> bank(torch.zeros(3, 4, 10)).shape        # one input per expert
    torch.Size([3, 4, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from mtlkit.nn.mlp import BatchNorm
from mtlkit.nn.vocabulary_affine import FactoredInput, first_affine

# Parameter-free activations only: a learned PReLU would be shared across experts.
EXPERT_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BatchedLinear(nn.Module):
    """``n`` independent affine maps ``y_i = x_i W_i + b_i`` held as one ``(n, in, out)`` weight.

    Input ``(B, in)`` is shared by all ``n`` maps; input ``(B, n, in)`` gives each map its own.
    Output is ``(B, n, out)``. Initialised like ``nn.Linear`` (uniform ±1/√in), per map.
    """

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def flat_weight(self) -> Tensor:
        """The weight as one ``(in, n·out)`` matrix, the maps side by side (what a shared input multiplies)."""
        return self.weight.permute(1, 0, 2).reshape(self.in_features, self.n * self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        # The bias is fused into the matmul (addmm / baddbmm): one kernel, and under bf16 autocast
        # the output stays bf16 instead of being promoted by a separate fp32 add.
        if x.dim() == 2:
            # Shared input: all maps side by side in one (in, n·out) matmul.
            flat = self.flat_weight()
            y = x @ flat if self.bias is None else torch.addmm(self.bias.reshape(-1), x, flat)
            return y.view(x.shape[0], self.n, self.out_features)
        if x.dim() == 3 and x.shape[1] == self.n:
            # Per-map input: one bmm with the map axis as the batch axis.
            per_map = x.transpose(0, 1)
            y = torch.bmm(per_map, self.weight) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), per_map, self.weight)
            return y.transpose(0, 1)
        raise ValueError(f"expected (B, {self.in_features}) or (B, {self.n}, {self.in_features}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"n={self.n}, in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ExpertBank(nn.Module):
    """``n_experts`` MLPs of identical shape (Linear → [BatchNorm] → activation → dropout per hidden layer).

    Layer for layer the same computation as ``n_experts`` separate :class:`mtlkit.nn.MLP`s, so
    a bank and a list of MLPs with copied weights give the same outputs. ``batch_norm`` normalises
    each expert's units over the batch (one ``BatchNorm1d`` over the ``E·out`` columns: per expert,
    per unit, as a BatchNorm in each separate MLP would).
    """

    def __init__(
        self,
        n_experts: int,
        input_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_experts < 1 or not hidden:
            raise ValueError("an expert bank needs at least one expert and one layer")
        if activation not in EXPERT_ACTIVATIONS:
            raise ValueError(f"unknown expert activation {activation!r}; choose one of: {', '.join(EXPERT_ACTIVATIONS)}")
        widths = [input_dim, *hidden]
        self.layers = nn.ModuleList(BatchedLinear(n_experts, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(BatchNorm(n_experts * b) for b in hidden) if batch_norm else None
        self.activation = EXPERT_ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.n_experts = n_experts
        self.input_dim = input_dim
        self.output_dim = widths[-1]

    @property
    def first_layer(self) -> BatchedLinear:
        """The map every expert applies to the input first (the one an MoE fuses with its gates)."""
        return cast(BatchedLinear, self.layers[0])

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in)`` or ``(B, E, in)`` → ``(B, E, output_dim)``."""
        return self.from_first_layer(self.first_layer(x))

    def from_first_layer(self, y: Tensor) -> Tensor:
        """The bank's output given its first linear map's output ``y = first_layer(x)``, ``(B, E, hidden[0])``.

        Lets the first map run inside a larger GEMM (:func:`shared_input_linears`)."""
        for i, layer in enumerate(self.layers):
            if i:
                y = layer(y)
            if self.norms is not None:
                y = self.norms[i](y.flatten(1)).view_as(y)
            y = self.dropout(self.activation(y))
        return y


def shared_input_linears(x: Tensor | FactoredInput, layers: Sequence[BatchedLinear], constant: slice | None = None) -> list[Tensor]:
    """``[layer(x) for layer in layers]`` for one ``(B, in)`` input that every layer reads, as one GEMM.

    An MoE's experts and its gates read the same input (MMoE, Ma et al. 2018, Eq. 6–8; PLE's first
    level). Apart, each gate map is a skinny ``(in, G·E)`` GEMM that runs far below the machine's
    matmul rate, and the backward adds their ``(B, in)`` input gradients. Side by side, the gates are
    ``G·E`` more columns of the experts' ``(in, E·H)`` GEMM: one ``addmm`` forward, two backward.
    The weights are concatenated per call (a copy of ``in × columns`` values, small next to the GEMM).
    ``constant``: columns of ``x`` that need no input gradient (:func:`mtlkit.nn.input_affine.input_affine`);
    ``x`` may be a :class:`~mtlkit.nn.vocabulary_affine.FactoredInput` (small fields in vocabulary space).

    Example:
        >>> import torch
        >>> experts, gates = BatchedLinear(4, 10, 8), BatchedLinear(2, 10, 4, bias=False)
        >>> x = torch.randn(3, 10)
        >>> e, g = shared_input_linears(x, [experts, gates])
        >>> e.shape, g.shape, bool(torch.allclose(g, gates(x), atol=1e-6))
        (torch.Size([3, 4, 8]), torch.Size([3, 2, 4]), True)
    """
    if not isinstance(x, FactoredInput) and x.dim() != 2:
        raise ValueError(f"shared_input_linears needs one (B, in) input, got {tuple(x.shape)}")
    if len(layers) == 1 and constant is None and not isinstance(x, FactoredInput):
        return [layers[0](x)]
    weight = torch.cat([layer.flat_weight() for layer in layers], dim=1)
    bias = torch.cat([layer.bias.reshape(-1) if layer.bias is not None else layer.weight.new_zeros(layer.n * layer.out_features)
                      for layer in layers])
    y = first_affine(x, weight, bias, constant)
    parts = y.split([layer.n * layer.out_features for layer in layers], dim=1)
    return [part.view(y.shape[0], layer.n, layer.out_features) for part, layer in zip(parts, layers)]


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """Gate-weighted sums ``Σ_e g_e f_e``: ``(B, G, E)`` weights × ``(B, E, d)`` experts → ``(B, G, d)``."""
    return torch.bmm(weights, experts)
