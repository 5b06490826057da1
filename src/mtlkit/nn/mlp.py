"""A plain multi-layer perceptron: Linear → activation → dropout per hidden layer.

Example:
    >>> import torch
    >>> mlp = MLP(8, [16, 4])
    >>> mlp(torch.zeros(1, 8)).shape, mlp.output_dim
    (torch.Size([1, 4]), 4)
    >>> MLP(8, []).output_dim   # no hidden layer: the identity
    8
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from mtlkit.nn.vocabulary_affine import FactoredInput, first_affine

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "prelu": nn.PReLU}


class BatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` that normalises a training batch of one row with its running statistics
    (a one-row batch has no variance: plain BatchNorm raises on it), and the batch statistics otherwise.

    A strided input (an MoE's expert columns, a view into the one GEMM they share with the gates) is
    made contiguous first: torch's CPU batch-norm kernels take a slow path for it, forward and
    backward of a (1024, 512) view with row stride 528 took 5.1 ms against 1.1 ms with the copy
    (2 threads, AMD EPYC)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class MLP(nn.Sequential):
    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(BatchNorm(size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        super().__init__(*layers)
        self.output_dim = width

    def takes_factored_input(self) -> bool:
        """Whether the first layer is a ``Linear`` (what reads a factored input)."""
        return len(self) > 0 and isinstance(self[0], nn.Linear)

    def forward(self, x: Tensor | FactoredInput, constant: slice | None = None) -> Tensor:
        """nn.Sequential semantics; ``constant``: input columns that need no gradient (see
        :func:`mtlkit.nn.input_affine.input_affine`), used by the first ``Linear``, which also reads
        a :class:`~mtlkit.nn.vocabulary_affine.FactoredInput` (:meth:`takes_factored_input`)."""
        if not isinstance(x, FactoredInput) and (constant is None or not len(self)):
            return super().forward(x)
        first, *rest = self
        assert isinstance(first, nn.Linear)
        h = first_affine(x, first.weight.t(), first.bias, constant)
        for layer in rest:
            h = layer(h)
        return h
