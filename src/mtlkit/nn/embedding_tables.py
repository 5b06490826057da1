"""Embedding tables: the interface a categorical-embedding backend implements, and a registry.

:class:`~mtlkit.nn.embedding.TabularEncoder` reads categorical fields only through a table built
as ``EMBEDDING_TABLES.get(name)(cardinalities, dim)``; ``model.embedding_table`` in a run config
names it (default ``fused``). A table is an ``nn.Module`` with

- ``forward(ids)``: ``(B, F)`` long ids of the first ``F`` fields (per-field ids, 0 = unseen or
  missing) → ``(B, F, dim)``;
- ``field(ids, f)``: ids of any shape, all of field ``f`` (sequence features) → ``(*ids.shape, dim)``;
- ``num_fields`` and ``dim``;
- a ``dtype`` keyword (default ``torch.float32``): the weights' storage. ``torch.bfloat16`` halves
  the tables' memory (``model.embedding_storage: bfloat16``); lookups still return fp32, and the
  table optimisers update rows in fp32 and round them back stochastically
  (:mod:`mtlkit.optim.rounding`). The weights are created in that dtype, never as an fp32 table first.

Registered here: ``fused`` (:class:`FusedEmbedding`: one ``nn.Embedding`` with per-field offsets,
one gather for all fields — the fast default on CPU) and ``per_field`` (:class:`PerFieldEmbedding`:
one ``nn.Embedding`` per field, the classic layout; a reference, and the shape a per-table sharder
expects). Adding a backend is one class + one ``@EMBEDDING_TABLES.register`` line.

**Sharded tables (TorchRec), the path not built here.** A backend for tables larger than one
device would wrap an ``EmbeddingBagCollection`` (one ``EmbeddingBagConfig`` per field; ids passed
as a ``KeyedJaggedTensor``) sharded by ``DistributedModelParallel`` with a plan from
``EmbeddingShardingPlanner`` (table-, row- or column-wise), behind the same ``forward`` / ``field``.
What changes then is outside the table (see :mod:`mtlkit.train.distributed`): its parameters
leave the data-parallel gradient all-reduce (TorchRec's fused optimiser updates them in the
backward), checkpoints become sharded (``torch.distributed.checkpoint``), and gradient balancers
must keep the tables out of ``shared_parameters()`` (a Jacobian over a sharded table is not local).

**Sparse gradients** (``set_sparse_gradients(True)``, switched on by
:func:`mtlkit.optim.build_optimizers` when a table optimiser is configured): the lookup is
``nn.functional.embedding(..., sparse=True)``, so the weight's ``.grad`` is a COO tensor holding
one row per looked-up id (``B·F`` rows, duplicates not yet summed) instead of a dense ``R × d``
tensor. Its cost follows the batch, not the table: the backward writes ``B·F·d`` values, the
table optimisers of :mod:`mtlkit.optim` coalesce them (sum duplicate ids) and update only those
rows, and nothing anywhere allocates a table-sized zero tensor. The sparse lookup is left out of
``torch.compile`` (:func:`sparse_lookup`: a graph break). Under ``torch.autocast`` the lookup
stays fp32 (embedding is not an autocast op) and the gradient rows arrive in fp32.
:meth:`EmbeddingTable.field_rows` says which weight and which row range hold each field, for
per-field optimiser settings; :func:`sparse_weights` lists a model's weights in sparse mode (the
gradient balancers and the data-parallel exchange treat them as touched rows only).

**TorchRec/FBGEMM version matrix.** ``fbgemm-gpu-cpu`` 1.9.0 does not load against torch 2.13
(undefined symbol in ``fbgemm_gpu_tbe_index_select.so``). FBGEMM's binaries are built against one
torch release each; its compatibility table (FBGEMM docs, "Releases") lists fbgemm-gpu 0.8.0 ↔
torch 2.4, 1.0.0 ↔ 2.5, 1.1.0 ↔ 2.6, 1.2.0 ↔ 2.7, 1.4.0 ↔ 2.9, 1.5.0 ↔ 2.10, and TorchRec
releases with the same version number as FBGEMM's (TorchRec docs, "Setting up TorchRec"). None
of these pairs was tried here, so a TorchRec backend must be tested in an environment pinned to
one of them before it is registered. What such a backend implements here: ``forward``/``field`` as above
over a ``KeyedJaggedTensor``; ``field_rows()`` (one entry per field, its own table);
``set_sparse_gradients`` as a no-op (FBGEMM's fused optimiser applies the row-wise update inside
the backward, so the weights never get a ``.grad`` and must be left out of
:func:`mtlkit.optim.build_optimizers`' table optimisers); and a ``state_dict`` that gathers
shards for export. Nothing of it is shipped untested.

Example:
    >>> import torch
    >>> fused, per_field = FusedEmbedding([3, 5], 4), PerFieldEmbedding([3, 5], 4)
    >>> per_field.load_fused(fused)                      # the same rows, another layout
    >>> ids = torch.tensor([[2, 4], [0, 1]])
    >>> bool(torch.equal(fused(ids), per_field(ids))), fused(ids).shape
    (True, torch.Size([2, 2, 4]))
    >>> fused.set_sparse_gradients(True)
    >>> fused(ids).sum().backward()
    >>> grad = fused.table.weight.grad.coalesce()      # only the 4 looked-up rows (of 8)
    >>> grad.is_sparse, grad.indices().tolist()
    (True, [[0, 2, 4, 7]])
    >>> [(start, stop) for _, start, stop in fused.field_rows()]
    [(0, 3), (3, 8)]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mtlkit.registry import Registry

EMBEDDING_TABLES: Registry[Callable[..., EmbeddingTable]] = Registry("embedding table")


class FieldRows(NamedTuple):
    """Where one field's rows live: ``weight[start:stop]``."""

    weight: nn.Parameter
    start: int
    stop: int


class EmbeddingTable(nn.Module):
    """Base of the registered tables: the sparse-gradient switch and the per-field row map."""

    num_fields: int
    dim: int

    def __init__(self) -> None:
        super().__init__()
        self.sparse_gradients = False

    def set_sparse_gradients(self, enabled: bool) -> None:
        """Give the weights COO gradients of the looked-up rows only (see the module docstring)."""
        self.sparse_gradients = bool(enabled)

    def field(self, ids: Tensor, field: int) -> Tensor:
        """Ids of any shape, all of field ``field`` → ``(*ids.shape, dim)`` embeddings."""
        raise NotImplementedError

    def field_rows(self) -> list[FieldRows]:
        """One entry per field, in field order."""
        raise NotImplementedError


def embedding_tables(model: nn.Module) -> list[EmbeddingTable]:
    """The embedding tables inside ``model``."""
    return [m for m in model.modules() if isinstance(m, EmbeddingTable)]


def sparse_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of ``model``'s tables in sparse-gradient mode (each once, in model order)."""
    seen: dict[int, nn.Parameter] = {}
    for table in embedding_tables(model):
        if table.sparse_gradients:
            for rows in table.field_rows():
                seen.setdefault(id(rows.weight), rows.weight)
    return list(seen.values())


def as_float(rows: Tensor) -> Tensor:
    """Looked-up rows in fp32, whatever the storage (a bf16 table's rows are upcast exactly)."""
    return rows if rows.dtype == torch.float32 else rows.float()


@torch.compiler.disable
def sparse_lookup(ids: Tensor, weight: Tensor) -> Tensor:
    """``weight[ids]`` with a COO gradient. Left out of ``torch.compile`` (a graph break): Inductor
    has no sparse kernels in torch 2.13 ("Cannot access storage of SparseTensorImpl"), so the
    lookup and its backward run eagerly and the rest of the model compiles."""
    return F.embedding(ids, weight, sparse=True)


@EMBEDDING_TABLES.register("fused")
class FusedEmbedding(EmbeddingTable):
    """Every field's rows in one ``nn.Embedding``, each field's ids shifted by its offset."""

    offsets: Tensor

    def __init__(self, cardinalities: Sequence[int], dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(int(sum(cardinalities)), dim, dtype=dtype)
        nn.init.normal_(self.table.weight, std=0.05)
        self.cardinalities = [int(c) for c in cardinalities]
        self.num_fields = len(cardinalities)
        self.dim = dim

    def _lookup(self, flat: Tensor) -> Tensor:
        if self.sparse_gradients:  # COO gradient of the looked-up rows (B·F·d values)
            return as_float(sparse_lookup(flat, self.table.weight))
        # index_select's backward (index_add) is ~5x cheaper on CPU than nn.Embedding's dense backward.
        return as_float(self.table.weight.index_select(0, flat))

    def forward(self, ids: Tensor) -> Tensor:
        """``(B, F)`` per-field ids of the first ``F`` fields → ``(B, F, dim)`` embeddings."""
        rows = self._lookup((ids + self.offsets[: ids.shape[-1]]).reshape(-1))
        return rows.view(*ids.shape, self.dim)

    def field(self, ids: Tensor, field: int) -> Tensor:
        """Ids of any shape, all of field ``field`` → ``(*ids.shape, dim)`` embeddings."""
        rows = self._lookup((ids + self.offsets[field]).reshape(-1))
        return rows.view(*ids.shape, self.dim)

    def fields(self, ids: Tensor, fields: Tensor) -> Tensor:
        """``(B, len(fields))`` per-field ids of the fields ``fields`` (a long tensor) → ``(B, len(fields), dim)``."""
        rows = self._lookup((ids + self.offsets.index_select(0, fields)).reshape(-1))
        return rows.view(*ids.shape, self.dim)

    def field_rows(self) -> list[FieldRows]:
        starts = [0, *itertools.accumulate(self.cardinalities)]
        return [FieldRows(self.table.weight, a, b)  # type: ignore[arg-type]  # torch stub: nn.Embedding.weight is declared Tensor, it is a Parameter
                for a, b in zip(starts[:-1], starts[1:])]


@EMBEDDING_TABLES.register("per_field")
class PerFieldEmbedding(EmbeddingTable):
    """One ``nn.Embedding`` per field (``F`` gathers per batch instead of one)."""

    def __init__(self, cardinalities: Sequence[int], dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(int(c), dim, dtype=dtype) for c in cardinalities)
        for table in cast("Iterable[nn.Embedding]", self.tables):  # torch stub: ModuleList iterates as Module
            nn.init.normal_(table.weight, std=0.05)
        self.num_fields = len(cardinalities)
        self.dim = dim

    def _lookup(self, ids: Tensor, field: int) -> Tensor:
        table = self.tables[field]
        return as_float(sparse_lookup(ids, table.weight) if self.sparse_gradients else table(ids))

    def forward(self, ids: Tensor) -> Tensor:
        return torch.stack([self._lookup(ids[..., f], f) for f in range(ids.shape[-1])], dim=-2)

    def field(self, ids: Tensor, field: int) -> Tensor:
        return self._lookup(ids, field)

    def field_rows(self) -> list[FieldRows]:
        return [FieldRows(t.weight, 0, t.num_embeddings)  # type: ignore[arg-type]  # torch stub: nn.Embedding.weight is declared Tensor, it is a Parameter
                for t in cast("Iterable[nn.Embedding]", self.tables)]

    @torch.no_grad()
    def load_fused(self, fused: FusedEmbedding) -> None:
        """Copy a fused table's rows, field by field."""
        start = 0
        for table in cast("Iterable[nn.Embedding]", self.tables):  # torch stub: ModuleList iterates as Module
            table.weight.copy_(fused.table.weight[start : start + table.num_embeddings])
            start += table.num_embeddings


__all__ = ["EMBEDDING_TABLES", "EmbeddingTable", "FieldRows", "FusedEmbedding", "PerFieldEmbedding",
           "embedding_tables", "sparse_weights"]
