"""Every task's tower and output layer as one batched matmul per layer, when the towers are alike.

A multi-task model has one tower MLP and output layer per task (MMoE, Ma et al. KDD 2018: the
towers ``h^k`` of Eq. 7). Applied one after the other they are ``T`` small GEMMs per layer, each
below the machine's matmul rate and each paying an op's fixed cost, forward and backward. When
the towers have the same shape, the ``T`` inputs ``(B, d)`` stack to ``(T, B, d)`` and the ``T``
weights of a layer to ``(T, d, h)``, so a layer is one ``baddbmm``. The weights stay each task's
own parameters (stacked per call, a copy of the towers' few weights), so checkpoints, per-task
parameter groups and balancers see the same modules as before.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from mtlkit.nn import MLP
    >>> heads = [(MLP(6, [4]), nn.Linear(4, 1)) for _ in range(3)]
    >>> stackable(heads)
    True
    >>> xs = [torch.randn(5, 6) for _ in range(3)]
    >>> ys = stacked_heads(heads, xs)
    >>> [tuple(y.shape) for y in ys], bool(torch.allclose(ys[1], heads[1][1](heads[1][0](xs[1])), atol=1e-6))
    ([(5, 1), (5, 1), (5, 1)], True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlkit.nn.mlp import MLP

# Modules a stacked tower may hold: linear maps, parameter-free activations, dropout.
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Dropout)

Head = tuple[MLP, nn.Linear]


def _signature(module: nn.Module) -> tuple | None:
    if isinstance(module, nn.Linear):
        return ("linear", module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.Dropout):
        return ("dropout", module.p)
    if isinstance(module, _ELEMENTWISE):
        return (type(module).__name__,)
    return None  # BatchNorm, PReLU, anything else: evaluated per task


def stackable(heads: Sequence[Head]) -> bool:
    """True when there are two or more heads and every one has the same layers (shapes and kinds)."""
    if len(heads) < 2:
        return False
    signatures = [[_signature(m) for m in (*tower, output)] for tower, output in heads]
    return None not in signatures[0] and all(s == signatures[0] for s in signatures[1:])


def _stacked_linear(x: Tensor, layers: Sequence[nn.Linear]) -> Tensor:
    """``(T, B, in)`` → ``(T, B, out)``: layer ``t`` applied to ``x[t]``, one batched matmul."""
    weight = torch.stack([layer.weight for layer in layers]).transpose(1, 2)  # (T, in, out)
    if layers[0].bias is None:
        return torch.bmm(x, weight)
    bias = torch.stack([layer.bias for layer in layers]).unsqueeze(1)
    return torch.baddbmm(bias, x, weight)


def stacked_heads(heads: Sequence[Head], inputs: Sequence[Tensor]) -> list[Tensor]:
    """Each head's output ``output_t(tower_t(inputs[t]))``, computed for all heads at once.

    Requires :func:`stackable` heads and inputs of one shape. Inputs that are one tensor (every task
    reads the same representation, as after a shared bottom) are broadcast, not copied.
    """
    first = inputs[0]
    if all(x is first for x in inputs):
        x = first.unsqueeze(0).expand(len(inputs), *first.shape)
    else:
        x = torch.stack(list(inputs))
    layers = [[*tower, output] for tower, output in heads]
    for position, module in enumerate(layers[0]):
        if isinstance(module, nn.Linear):
            x = _stacked_linear(x, [layer[position] for layer in layers])
        else:
            x = module(x)  # the same parameter-free op for every head
    return list(x.unbind(0))


__all__ = ["stackable", "stacked_heads"]
