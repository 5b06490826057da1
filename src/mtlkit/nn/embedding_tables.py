"""Embedding tables: the interface a categorical-embedding backend implements, and a registry.

:class:`~mtlkit.nn.embedding.TabularEncoder` reads categorical fields only through a table built
as ``EMBEDDING_TABLES.get(name)(cardinalities, dim)``; ``model.embedding_table`` in a run config
names it (default ``fused``). A table is an ``nn.Module`` with

- ``forward(ids)``: ``(B, F)`` long ids of the first ``F`` fields (per-field ids, 0 = unseen or
  missing) → ``(B, F, dim)``;
- ``field(ids, f)``: ids of any shape, all of field ``f`` (sequence features) → ``(*ids.shape, dim)``;
- ``num_fields`` and ``dim``.

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

Example:
    >>> import torch
    >>> fused, per_field = FusedEmbedding([3, 5], 4), PerFieldEmbedding([3, 5], 4)
    >>> per_field.load_fused(fused)                      # the same rows, another layout
    >>> ids = torch.tensor([[2, 4], [0, 1]])
    >>> bool(torch.equal(fused(ids), per_field(ids))), fused(ids).shape
    (True, torch.Size([2, 2, 4]))
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from mtlkit.registry import Registry

EMBEDDING_TABLES: Registry[Callable[[Sequence[int], int], nn.Module]] = Registry("embedding table")


@EMBEDDING_TABLES.register("fused")
class FusedEmbedding(nn.Module):
    """Every field's rows in one ``nn.Embedding``, each field's ids shifted by its offset."""

    def __init__(self, cardinalities: Sequence[int], dim: int) -> None:
        super().__init__()
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(int(sum(cardinalities)), dim)
        nn.init.normal_(self.table.weight, std=0.05)
        self.num_fields = len(cardinalities)
        self.dim = dim

    def forward(self, ids: Tensor) -> Tensor:
        """``(B, F)`` per-field ids of the first ``F`` fields → ``(B, F, dim)`` embeddings."""
        # index_select's backward (index_add) is ~5x cheaper on CPU than nn.Embedding's dense backward.
        rows = self.table.weight.index_select(0, (ids + self.offsets[: ids.shape[-1]]).reshape(-1))
        return rows.view(*ids.shape, self.dim)

    def field(self, ids: Tensor, field: int) -> Tensor:
        """Ids of any shape, all of field ``field`` → ``(*ids.shape, dim)`` embeddings."""
        rows = self.table.weight.index_select(0, (ids + self.offsets[field]).reshape(-1))
        return rows.view(*ids.shape, self.dim)


@EMBEDDING_TABLES.register("per_field")
class PerFieldEmbedding(nn.Module):
    """One ``nn.Embedding`` per field (``F`` gathers per batch instead of one)."""

    def __init__(self, cardinalities: Sequence[int], dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(int(c), dim) for c in cardinalities)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.05)
        self.num_fields = len(cardinalities)
        self.dim = dim

    def forward(self, ids: Tensor) -> Tensor:
        return torch.stack([self.tables[f](ids[..., f]) for f in range(ids.shape[-1])], dim=-2)

    def field(self, ids: Tensor, field: int) -> Tensor:
        return self.tables[field](ids)

    @torch.no_grad()
    def load_fused(self, fused: FusedEmbedding) -> None:
        """Copy a fused table's rows, field by field."""
        start = 0
        for table in self.tables:
            table.weight.copy_(fused.table.weight[start : start + table.num_embeddings])
            start += table.num_embeddings


__all__ = ["EMBEDDING_TABLES", "FusedEmbedding", "PerFieldEmbedding"]
