"""The first affine map of a backbone, without an input gradient for the columns that cannot use one.

A backbone's input ``x = [embeddings | numeric | pooled sequences]`` (see
:mod:`mtlkit.models.layout`) is differentiated only to reach the embedding tables: the numeric
columns are data. Autograd cannot know that, so the first layer's backward computes the full
``∂L/∂x = g Wᵀ``, ``B × in`` with ``in`` the whole input width — and an odd width such as census's
``32·16 + 7 = 519`` columns makes that GEMM's output unaligned: alone, on a 2-core AMD EPYC,
``(1024, 528) × (528, 519)`` took 3.5 ms where the 512 embedding columns took 3.0–3.1 ms (2 threads;
8.1 vs 6.9 ms at 1 thread). :func:`input_affine` computes ``bias + x W`` like ``torch.addmm`` and,
given the ``constant`` column block, writes the input gradient of the other columns straight into
their place in the gradient buffer (the block itself gets zeros). Inside a whole training step the
gain is smaller than the GEMM alone suggests (``benchmarks/moe_fusion.py``, census MMoE, 1 thread,
20 rounds: 28.5 against 29.0 ms per step, fastest rounds 25.8 against 26.8 ms; at 2 threads within
the machine's noise).

The fast backward writes into a preallocated buffer, which neither a differentiable backward
(``create_graph=True``) nor a vmapped one (``is_grads_batched``, functorch) can follow; both get
the same gradient from plain differentiable ops instead.

Example:
    >>> import torch
    >>> x = torch.randn(4, 6, requires_grad=True)
    >>> weight, bias = torch.randn(6, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    >>> y = input_affine(x, weight, bias, constant=slice(4, 6))
    >>> bool(torch.allclose(y, torch.addmm(bias, x, weight)))
    True
    >>> y.sum().backward()
    >>> x.grad[:, 4:].abs().sum().item()   # the constant block: no gradient computed
    0.0
    >>> bool(torch.allclose(x.grad[:, :4], (torch.ones(4, 3) @ weight.t())[:, :4]))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def input_affine(x: Tensor, weight: Tensor, bias: Tensor | None, constant: slice | None = None) -> Tensor:
    """``bias + x @ weight`` for ``x`` ``(B, in)`` and ``weight`` ``(in, out)``; no gradient flows into
    ``x[:, constant]`` (a block of columns that nothing upstream differentiates: raw numeric features).
    An ``nn.Linear`` passes ``linear.weight.t()``; its gradient then comes back in ``(out, in)`` layout.

    ``constant=None`` (or an empty block) is exactly ``torch.addmm``. Under autocast the three
    operands are cast as autocast casts ``addmm``'s (the casts stay in the graph, so gradients reach
    the fp32 parameters).
    """
    start, stop, _ = constant.indices(x.shape[-1]) if constant is not None else (0, 0, 1)
    if stop <= start or x.dim() != 2 or not _trains(x, weight) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        # nothing to skip (inference), or a graph being captured (export, torch.compile): plain aten ops
        return x @ weight if bias is None else torch.addmm(bias, x, weight)
    device = x.device.type
    if autocast_active(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device, enabled=False):
            return _InputAffine.apply(x, weight, bias, start, stop)
    return _InputAffine.apply(x, weight, bias, start, stop)


def autocast_active(device: str) -> bool:
    """Whether autocast is on for ``device`` (a device type without autocast, e.g. ``meta`` in the
    memory estimates of :mod:`mtlkit.sizing`, has none to ask)."""
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def _transposed(weight: Tensor) -> bool:
    """``weight`` is the transpose of a contiguous matrix (``linear.weight.t()``)."""
    return weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) == weight.shape[0] and weight.shape[0] > 1


def _trains(x: Tensor, weight: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def _plain(t: Tensor) -> bool:
    """A tensor the fast backward may write next to: not batched by ``autograd.grad(is_grads_batched=True)``
    (the balancers' vmapped Jacobian) nor wrapped by a functorch transform (``torch.func.vmap``, ``grad``)."""
    functorch = torch._C._functorch
    return not (functorch.is_legacy_batchedtensor(t) or functorch.is_functorch_wrapped_tensor(t))


class _InputAffine(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, start: int, stop: int) -> Tensor:
        return x @ weight if bias is None else torch.addmm(bias, x, weight)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, _, start, stop = inputs
        ctx.save_for_backward(x, weight)
        ctx.block = (start, stop)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_x = _input_gradient(grad, weight, *ctx.block) if needs_x else None
        grad_weight = None
        if needs_weight:  # in the weight's own layout: an nn.Linear weight passed as ``weight.t()`` gets (out, in)
            grad_weight = (grad.t() @ x).t() if _transposed(weight) else x.t() @ grad
        grad_bias = grad.sum(0) if needs_bias else None
        return grad_x, grad_weight, grad_bias, None, None


def _input_gradient(grad: Tensor, weight: Tensor, start: int, stop: int) -> Tensor:
    width = weight.shape[0]
    blocks = [(lo, hi) for lo, hi in ((0, start), (stop, width)) if hi > lo]
    if torch.is_grad_enabled() or not (_plain(grad) and _plain(weight)):
        # differentiable (double backward) and vmappable: the same values from functional ops
        parts = [grad @ weight[lo:hi].t() for lo, hi in blocks]
        parts.insert(1 if start > 0 else 0, grad.new_zeros(grad.shape[0], stop - start))
        return torch.cat(parts, dim=1)
    out = grad.new_empty(grad.shape[0], width)
    for lo, hi in blocks:  # BLAS writes each block in place (leading dimension = width): no copy, no cat
        torch.mm(grad, weight[lo:hi].t(), out=out[:, lo:hi])
    out[:, start:stop].zero_()
    return out


__all__ = ["autocast_active", "input_affine"]
