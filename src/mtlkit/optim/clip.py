"""Gradient norm and clipping over dense and sparse (embedding-table) gradients.

``torch.nn.utils.clip_grad_norm_`` cannot take a sparse gradient (``linalg_vector_norm`` has no
sparse kernel in torch 2.13). Here a sparse gradient is coalesced in place (duplicate ids summed:
the norm of the *summed* rows is the true gradient's norm) and contributes the norm of its values,
so the cost follows the rows the batch touched; dense gradients go through ``torch._foreach_norm``
like torch's own. The clip coefficient is torch's: ``min(1, max_norm / (‖g‖ + 1e-6))``.

Example:
    >>> import torch
    >>> w, b = torch.nn.Parameter(torch.zeros(10, 2)), torch.nn.Parameter(torch.zeros(1))
    >>> w.grad = torch.sparse_coo_tensor([[4, 4]], torch.tensor([[1.5, 0.0], [1.5, 0.0]]), (10, 2), check_invariants=True)
    >>> b.grad = torch.tensor([4.0])
    >>> clip_grad_norm_([w, b], max_norm=1.0)            # ‖(3, 0, 4)‖ = 5
    tensor(5.)
    >>> [round(v, 4) for v in w.grad.values()[0].tolist()], round(b.grad.item(), 4)
    ([0.6, 0.0], 0.8)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor

from mtlkit.optim.base import touched_rows


def grad_norm(params: Iterable[Tensor]) -> Tensor:
    """The 2-norm of all gradients of ``params`` together (sparse ones coalesced in place)."""
    dense, sparse = [], []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            sparse.append(touched_rows(p)[1])
        else:
            dense.append(p.grad)
    tensors = dense + sparse
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm(tensors) if len({t.device for t in tensors}) == 1 else [t.norm() for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients of ``params`` so that their joint norm is at most ``max_norm``; return the norm before."""
    params = [p for p in params if p.grad is not None]
    total = grad_norm(params)
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    grads = [cast(Tensor, p.grad) for p in params]  # not None: filtered above
    values = [g._values() if g.is_sparse else g for g in grads]  # coalesced by grad_norm: values are the rows
    if values and len({(v.device, v.dtype) for v in values}) == 1:
        torch._foreach_mul_(values, coefficient.to(values[0]))  # one kernel over all gradients, as torch's clipping does
    else:
        for v in values:
            v.mul_(coefficient.to(v))
    return total


__all__ = ["clip_grad_norm_", "grad_norm"]
