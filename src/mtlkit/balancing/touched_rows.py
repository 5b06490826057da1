"""The task Jacobian over the dense shared parameters plus the touched rows of sparse tables.

An embedding table in sparse-gradient mode (:mod:`mtlkit.nn.embedding_tables`) is part of the
shared parameters, but only the rows ``I`` a step looked up have a gradient. Its block of the
``T × n`` Jacobian is therefore taken over those rows only: task ``k``'s gradient w.r.t. the
table is a COO tensor (``B·F`` rows, duplicates unsummed); the union ``I`` of the ids of all tasks
is found once (``torch.unique``), and task ``k``'s row of the block is its gradient rows summed
into their positions in ``I`` (``index_add_``), ``|I|·d`` columns. So ``J`` has
``n_dense + Σ_tables |I|·d`` columns, at most ``n_dense + B·F·d``, whatever the table size
``V``; the Gramian, every aggregator, and the final update ``d`` work on it unchanged, and ``d``'s
table block goes back into ``.grad`` as a coalesced COO tensor over ``I``
(:meth:`Columns.assign`). For an aggregator that is a function of ``J`` this is exact: the
columns of rows outside ``I`` are zero for every task and contribute nothing to ``G = JJᵀ`` nor,
for the projections and weightings used here (``d = wᵀJ`` or a per-column map of ``J``), to ``d``.

With sparse tables among the inputs the Jacobian is always taken task by task (``"loop"``):
autograd's batched backward (``is_grads_batched``) has no sparse kernels in torch 2.13
(``aten::view`` on SparseCPU).

Example:
    >>> import torch
    >>> from torch.nn import functional as F
    >>> table, w = torch.nn.Parameter(torch.ones(1000, 2)), torch.nn.Parameter(torch.ones(2))
    >>> x = F.embedding(torch.tensor([3, 3, 7]), table, sparse=True)   # rows 3 (twice) and 7
    >>> losses = [(x @ w).sum(), (x[2] * w).sum()]
    >>> jac, columns = touched_rows_jacobian(losses, [w], [table])
    >>> jac.shape, columns.rows[1].tolist()       # 2 dense columns + 2 rows × 2 dims
    (torch.Size([2, 6]), [3, 7])
    >>> jac[1].tolist()
    [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    >>> columns.assign(jac[1]); table.grad.is_sparse, table.grad.coalesce().indices().tolist()
    (True, [[3, 7]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def accumulate_grad(param: Tensor, grad: Tensor) -> None:
    """``param.grad += grad`` for dense and sparse (COO) gradients alike."""
    if param.grad is None:
        param.grad = grad if grad.is_sparse else grad.clone()
    elif param.grad.is_sparse or grad.is_sparse:
        param.grad = param.grad + grad  # sparse + sparse concatenates rows; coalesced by the optimiser
    else:
        param.grad.add_(grad)


@dataclass
class Columns:
    """How the columns of a Jacobian map to parameters: per parameter a block of ``sizes[i]``
    columns, its flattened values (dense) or the rows ``rows[i]`` (sparse table) × its width."""

    params: list[Tensor]
    sizes: list[int]
    rows: list[Tensor | None]

    @property
    def sparse(self) -> bool:
        return any(r is not None for r in self.rows)

    def assign(self, flat: Tensor) -> None:
        """Add the update ``flat`` (one value per column) into the parameters' ``.grad``."""
        for p, block, ids in zip(self.params, torch.split(flat.detach(), self.sizes), self.rows):
            if ids is None:
                accumulate_grad(p, block.view_as(p).to(p.dtype))
            else:
                values = block.view(ids.numel(), *p.shape[1:]).to(p.dtype)
                accumulate_grad(p, torch.sparse_coo_tensor(ids.unsqueeze(0), values, p.shape, is_coalesced=True,
                                                           check_invariants=False))


def dense_columns(inputs: Sequence[Tensor]) -> Columns:
    return Columns(list(inputs), [t.numel() for t in inputs], [None] * len(inputs))


def touched_rows_jacobian(outputs: Sequence[Tensor], dense: Sequence[Tensor],
                          tables: Sequence[Tensor]) -> tuple[Tensor | None, Columns]:
    """``(J, columns)``: the Jacobian of the scalars ``outputs`` w.r.t. the ``dense`` parameters
    and the touched rows of the ``tables`` (weights with COO gradients), one backward per output.

    ``J`` is ``None`` when there is nothing to differentiate. The graph is retained.
    """
    dense, outputs = list(dense), list(outputs)
    if not outputs or not all(o.requires_grad for o in outputs):
        return None, dense_columns(dense)
    k = len(outputs)
    dense_jac = outputs[0].new_zeros(k, sum(p.numel() for p in dense))
    dense_sizes = [p.numel() for p in dense]
    table_grads: list[list[Tensor | None]] = [[] for _ in tables]
    for i, out in enumerate(outputs):
        # No materialize_grads: an unused table must not become a table-sized zero tensor.
        grads = torch.autograd.grad(out, [*dense, *tables], retain_graph=True, allow_unused=True)
        for block, g in zip(torch.split(dense_jac[i], dense_sizes), grads[: len(dense)]):
            if g is not None:
                block.copy_(g.reshape(-1))
        for j, g in enumerate(grads[len(dense):]):
            if g is not None and not g.is_sparse:
                raise RuntimeError("a table weight listed as sparse received a dense gradient; "
                                   "look it up through its table in sparse-gradient mode")
            table_grads[j].append(g)
    blocks, rows = [], []
    for table, task_grads in zip(tables, table_grads):
        present = [(i, g) for i, g in enumerate(task_grads) if g is not None and g._nnz() > 0]
        width = table[0].numel()
        if not present:
            ids = torch.zeros(0, dtype=torch.long, device=table.device)
            blocks.append(dense_jac.new_zeros(k, 0))
            rows.append(ids)
            continue
        ids, inverse = torch.unique(torch.cat([g._indices()[0] for _, g in present]), return_inverse=True)
        block = dense_jac.new_zeros(k, ids.numel(), width)
        for (i, g), positions in zip(present, torch.split(inverse, [g._nnz() for _, g in present])):
            block[i].index_add_(0, positions, g._values().reshape(-1, width).to(block.dtype))
        blocks.append(block.reshape(k, -1))
        rows.append(ids)
    jac = torch.cat([dense_jac, *blocks], dim=1)
    columns = Columns([*dense, *tables], [*dense_sizes, *[b.shape[1] for b in blocks]], [*([None] * len(dense)), *rows])
    return jac, columns


__all__ = ["Columns", "accumulate_grad", "dense_columns", "touched_rows_jacobian"]
