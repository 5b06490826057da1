"""Plain SGD on the touched rows of an embedding table.

Stochastic gradient descent (Robbins & Monro, 1951) on the rows ``I`` a batch touched, with
``g_r`` the coalesced gradient row of ``r ∈ I``:

    w_r ← w_r − lr · (g_r + λ·w_r)

with ``λ = weight_decay`` (default 0; applied to touched rows only, see
:mod:`mtlkit.optim.rowwise_adagrad`). No state: the cheapest table optimiser, and the one whose
step size a frequent row feels most (no per-row normalisation).

Options: ``lr`` (default 0.1), ``weight_decay`` (0).

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> opt = RowSGD([w], lr=0.5)
    >>> w.grad = torch.sparse_coo_tensor([[0, 0]], torch.ones(2, 2), (3, 2), check_invariants=True)   # id 0 twice: g = 2
    >>> opt.step()
    >>> w.data.tolist()
    [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor

from mtlkit.optim.base import TABLE_OPTIMIZERS, TableOptimizer, TableOptimizerOptions
from mtlkit.optim.rounding import add_to_rows


class RowSGDOptions(TableOptimizerOptions):
    lr: float = Field(default=0.1, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


@TABLE_OPTIMIZERS.register("sgd")
class RowSGD(TableOptimizer):
    Options = RowSGDOptions

    def update(self, param: Tensor, ids: Tensor, grad: Tensor, local: Tensor, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        if group["weight_decay"]:
            grad = grad.float() + group["weight_decay"] * param.index_select(0, ids).float()
        add_to_rows(param, ids, grad, state["step"], alpha=-group["lr"])


__all__ = ["RowSGD", "RowSGDOptions"]
