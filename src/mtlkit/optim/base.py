"""The base of the embedding-table optimisers: touched rows in, row updates out, a registry.

A table optimiser is a :class:`torch.optim.Optimizer` whose parameters are embedding-table
weights with sparse (COO) gradients (:meth:`mtlkit.nn.EmbeddingTable.set_sparse_gradients`). Each
step it takes, per weight, the *touched rows* of the gradient — :func:`touched_rows` coalesces
it once (duplicate ids of a batch summed; the coalesced tensor replaces ``.grad``, so clipping,
the data-parallel exchange and the next optimiser reuse it) into sorted unique ids ``I`` and
rows ``g_I`` — and updates ``w[I]`` and its own per-row state with ``index_select`` /
``index_copy_`` / ``index_add_``: no Python loop over rows, nothing of the table's size
allocated per step. Rows not in ``I`` are left bit-identical, their state too.

A dense gradient is accepted as "every row touched" (the reference the tests compare with).

A param group may own a row range (``rows=(start, stop)``): it updates only ids in it and keeps
state for ``stop − start`` rows, indexed ``id − start``. Several optimisers, one per range, then
share one fused weight — how per-field settings work on the fused table
(:func:`mtlkit.optim.build_table_optimizers`).

State: plain tensors and a step count per weight (``state_dict`` / ``load_state_dict`` of
:class:`torch.optim.Optimizer`), so a resumed run continues bit-identically.

Adding an optimiser is one file: an ``Options`` model, ``init_state`` and ``update``, and one
``@TABLE_OPTIMIZERS.register`` line (plus its import in ``mtlkit.optim``).

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(5, 2))
    >>> w.grad = torch.sparse_coo_tensor([[3, 1, 3]], torch.ones(3, 2), (5, 2), check_invariants=True)   # id 3 twice
    >>> ids, rows = touched_rows(w)
    >>> ids.tolist(), rows.tolist(), w.grad.is_coalesced()
    ([1, 3], [[1.0, 1.0], [2.0, 2.0]], True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mtlkit.registry import Registry


class TableOptimizerOptions(BaseModel):
    """Options every table optimiser has; a subclass adds its own (validated, frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    lr: float = Field(default=0.01, gt=0)


def touched_rows(param: Tensor) -> tuple[Tensor, Tensor]:
    """``(ids, rows)``: the sorted unique row ids of ``param.grad`` and their summed gradient rows.

    A sparse gradient is coalesced once and written back to ``param.grad``; a dense one stands
    for every row.
    """
    grad = param.grad
    assert grad is not None
    if not grad.is_sparse:
        return torch.arange(grad.shape[0], device=grad.device), grad.reshape(grad.shape[0], -1)
    if not grad.is_coalesced():
        grad = param.grad = coalesce(grad)
    return grad.indices()[0], grad.values().reshape(grad.indices().shape[1], -1)


def coalesce(grad: Tensor) -> Tensor:
    """``grad.coalesce()`` for a COO gradient of rows: on CPU ``unique`` + ``index_add_`` (3× faster
    than ``Tensor.coalesce`` at batch sizes, measured with 3k rows of 16 values; each id's rows
    summed in batch order); elsewhere ``Tensor.coalesce``, whose sums do not depend on the order
    of atomic additions (data-parallel ranks must get bit-identical gradients)."""
    if grad.device.type != "cpu":
        return grad.coalesce()
    ids, inverse = torch.unique(grad._indices()[0], sorted=True, return_inverse=True)
    values = grad._values()
    # A bf16 table's rows are summed in fp32 and rounded once: a popular id may repeat hundreds of
    # times in a batch, and a running bf16 sum would lose the later rows' low bits.
    wide = values if values.dtype == torch.float32 else values.float()
    rows = wide.new_zeros(ids.numel(), *values.shape[1:]).index_add_(0, inverse, wide).to(values.dtype)
    return torch.sparse_coo_tensor(ids.unsqueeze(0), rows, grad.shape, is_coalesced=True, check_invariants=False)


class TableOptimizer(torch.optim.Optimizer):
    """Base of the row-wise optimisers (see the module docstring)."""

    Options: ClassVar[type[TableOptimizerOptions]] = TableOptimizerOptions

    def __init__(self, params: Iterable[Any], rows: tuple[int, int] | None = None, **options: Any) -> None:
        defaults = {**self.Options(**options).model_dump(), "rows": tuple(rows) if rows is not None else None}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"{type(self).__name__} updates rows of 2-D table weights, got a {p.dim()}-D parameter")

    # -- what an optimiser file provides -------------------------------------------------------
    def init_state(self, param: Tensor, rows: int, group: dict[str, Any]) -> dict[str, Tensor]:
        """The per-row state for ``rows`` rows of ``param`` (created at its first step)."""
        return {}

    def update(self, param: Tensor, ids: Tensor, grad: Tensor, local: Tensor, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        """Update ``param[ids]`` from the gradient rows ``grad`` (state rows ``local``)."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :class:`torch.optim.Optimizer`, but the per-row state keeps its saved dtype: torch casts
        floating state to the weight's dtype, which would round a bf16 table's fp32 accumulators."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        for p, saved_id in zip(params, saved_ids):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if isinstance(value, Tensor):
                    self.state[p][key] = value.detach().clone().to(device=p.device)

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                ids, grad = touched_rows(p)
                start, stop = group["rows"] if group["rows"] is not None else (0, p.shape[0])
                if group["rows"] is not None:  # another optimiser owns the other rows of this weight
                    keep = (ids >= start) & (ids < stop)
                    ids, grad = ids[keep], grad[keep]
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state.update(self.init_state(p, stop - start, group))
                state["step"] += 1  # steps with a gradient, as torch.optim.SparseAdam counts them
                self.update(p, ids, grad.to(p.dtype), ids - start if start else ids, state, group)
        return loss


TABLE_OPTIMIZERS: Registry[type[TableOptimizer]] = Registry("embedding optimizer")

__all__ = ["TABLE_OPTIMIZERS", "TableOptimizer", "TableOptimizerOptions", "coalesce", "touched_rows"]
