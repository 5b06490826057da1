"""A backbone's first affine map over small categorical fields, computed in vocabulary space.

The first layer of an MoE or a shared bottom reads ``x = [e_1 | … | e_F | dense]`` with
``e_f = E_f[id_f]`` a ``d``-wide embedding row, so ``x W = Σ_f E_f[id_f] W_f + dense·W_dense``
with ``W_f`` the ``d`` rows of ``W`` that field ``f``'s columns meet. For a field whose vocabulary
is much smaller than the batch, ``P_f = E_f W_f`` (``|V_f| × out``) is cheaper to compute than the
batch's ``B × d × out`` share of the GEMM, and ``Σ_f P_f[id_f]`` is one ``embedding_bag`` sum —
the same numbers up to the order of float additions, and the same gradients: ``∂L/∂P_f`` is the
bag's scatter of ``∂L/∂y`` into the rows the batch used, then ``∂L/∂E_f = (∂L/∂P_f) W_fᵀ`` and
``∂L/∂W_f = E_fᵀ (∂L/∂P_f)`` are GEMMs of vocabulary size. On census-income (32 fields of 3–54
values, ``d = 16``, experts and gates 528 columns, batch 1024) the first layer's forward and
backward drop from ~10 ms to ~4.5 ms at 2 threads (``benchmarks/vocabulary_affine.py``).

A field qualifies (:func:`qualifies`) when the embeddings are at least 16 wide and its vocabulary
holds at most ``B·d/128`` rows (``B/8`` at ``d = 16``), where ``benchmarks/vocabulary_affine.py``
measured the crossover: the padded vocabulary-side product ``P`` (``F × M × out`` values, written and
read back in both passes) grows with the vocabulary, the batch-side GEMM it replaces with ``d``. First
layer of 32 fields → 528 columns, batch 1024, 2 threads, AMD EPYC, forward + backward, usual ÷
vocabulary space: ``d = 16``: 2.8× at 8 rows per field, 3.2× at 32, 2.0× at 128, 0.64× at 256;
``d = 32``: 6.6×, 4.1×, 2.6×, 1.24×; ``d = 8``: 1.0–1.1× up to 64 rows; ``d = 4``: 0.4–1.1×. Large ID
fields stay on the usual path. With a table in sparse-gradient mode (row-wise optimisers), the
small fields' gradient is a COO tensor over the rows the batch looked up, as the usual lookup gives. The qualifying fields' tables are
padded to the largest of their vocabularies ``M`` so that all of them are one ``bmm``;
padding rows are never looked up, so they get no gradient.

fp32 only: under autocast the model keeps the usual path. There the batch-side GEMMs run in bf16 at
two to three times the fp32 rate: ``benchmarks/moe_fusion.py --precision fp32 bf16`` (census MMoE step,
2 threads, AMD EPYC with AVX512-BF16, median of rounds) measured 7.75 ms the usual way in bf16 against
10.63 ms through vocabulary space in fp32 (and 22.48 ms the usual way in fp32, on a busy machine).

Example:
    >>> import torch
    >>> table = torch.randn(7, 2, requires_grad=True)            # two fields: rows 0-2 and 3-6
    >>> ids = torch.tensor([[0, 1], [2, 3], [1, 0]])              # per-field ids
    >>> plan = VocabularyPlan.build([3, 4], [0, 3], fields=[0, 1], columns=[0, 2], dim=2)
    >>> numeric = torch.randn(3, 1)
    >>> x = FactoredInput(plan, table, ids, numeric, dense_columns=torch.tensor([4]))
    >>> weight, bias = torch.randn(5, 3), torch.randn(3)
    >>> dense_x = torch.cat([table[ids[:, 0]], table[ids[:, 1] + 3], numeric], dim=1)
    >>> bool(torch.allclose(x.affine(weight, bias), torch.addmm(bias, dense_x, weight), atol=1e-6))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from mtlkit.nn.embedding_tables import sparse_lookup
from mtlkit.nn.input_affine import input_affine

#: Narrower embeddings gain nothing: the ``embedding_bag`` sum then costs what the GEMM saves.
MIN_DIM = 16


def qualifies(rows: int, batch: int, dim: int) -> bool:
    """Whether a field of ``rows`` values is cheaper in vocabulary space for ``batch`` rows of
    ``dim``-wide embeddings: ``dim >= 16`` and ``rows <= batch·dim/128`` (the measured crossover)."""
    return dim >= MIN_DIM and rows * 128 <= batch * dim


@dataclass(frozen=True)
class VocabularyPlan:
    """Which fields go through vocabulary space, and how their rows are laid out for one ``bmm``.

    ``fields``: the field indices (in ``x``'s field order); ``columns``: each field's first column
    in ``x``; ``rows``: ``(F·M,)`` table rows of the padded layout (field ``j``'s ids ``0..|V_j|-1``
    at ``j·M + id``, padding at the field's first row, never looked up); ``shift``: ``(F,)`` the
    padded layout's start of each field (``j·M``); ``weight_rows``: ``(F·d,)`` rows of ``W``;
    ``field_index``: ``fields`` as a tensor.
    """

    fields: tuple[int, ...]
    columns: tuple[int, ...]
    width: int  # M: the largest vocabulary among the fields
    dim: int
    rows: Tensor
    shift: Tensor
    weight_rows: Tensor
    field_index: Tensor
    contiguous_columns: bool  # the fields' columns are x[:, start : start + F·d], in order

    @classmethod
    def build(cls, cardinalities: Sequence[int], offsets: Sequence[int], fields: Sequence[int], columns: Sequence[int],
              dim: int) -> VocabularyPlan:
        """``cardinalities`` / ``offsets``: every field's vocabulary size and first row in the table."""
        width = max(cardinalities[f] for f in fields)
        rows = torch.empty(len(fields), width, dtype=torch.long)
        for j, f in enumerate(fields):
            rows[j] = offsets[f]  # padding: a valid row nobody looks up from here
            rows[j, : cardinalities[f]] = torch.arange(offsets[f], offsets[f] + cardinalities[f])
        weight_rows = torch.cat([torch.arange(c, c + dim) for c in columns])
        contiguous = all(b - a == dim for a, b in zip(columns, columns[1:]))
        return cls(tuple(fields), tuple(columns), width, dim, rows.reshape(-1),
                   torch.arange(len(fields)) * width, weight_rows, torch.tensor(fields, dtype=torch.long), contiguous)

    def to(self, device: torch.device) -> VocabularyPlan:
        if self.rows.device == device:
            return self
        return VocabularyPlan(self.fields, self.columns, self.width, self.dim, self.rows.to(device), self.shift.to(device),
                              self.weight_rows.to(device), self.field_index.to(device), self.contiguous_columns)


@dataclass
class FactoredInput:
    """A backbone input ``x`` whose plan's field columns are never materialised.

    ``table``: the embedding weight ``(R, d)``; ``ids``: ``(B, F_all)`` per-field ids of every
    categorical field; ``dense``: ``x``'s other columns, in order, at ``dense_columns`` of ``x``;
    ``constant``: a block of ``dense``'s columns that needs no input gradient (raw numeric features).
    Only the first affine map reads it (:meth:`affine`).
    """

    plan: VocabularyPlan
    table: Tensor
    ids: Tensor
    dense: Tensor
    dense_columns: Tensor
    constant: slice | None = None
    sparse: bool = False  # the table's weight takes COO gradients of the rows looked up (row-wise optimisers)

    def affine(self, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``bias + x @ weight`` for ``weight`` ``(in, out)``, ``in`` the width of ``x`` (an ``nn.Linear`` passes ``weight.t()``)."""
        plan = self.plan
        out = weight.shape[1]
        if plan.contiguous_columns:
            start = plan.columns[0]
            per_field = weight[start : start + len(plan.fields) * plan.dim]
        else:
            per_field = weight.index_select(0, plan.weight_rows)
        ids = self.ids.index_select(1, plan.field_index) + plan.shift
        projected = torch.bmm(self._padded_rows(ids).view(len(plan.fields), plan.width, plan.dim),
                              per_field.reshape(len(plan.fields), plan.dim, out))  # P_f = E_f W_f, (F, M, out)
        y = F.embedding_bag(ids, projected.view(-1, out), mode="sum")  # Σ_f P_f[id_f]
        if bias is not None:
            y = y + bias
        if self.dense.shape[1] == 0:
            return y
        dense_weight = weight.index_select(0, self.dense_columns)
        if self.dense.requires_grad:
            return y + input_affine(self.dense, dense_weight, None, self.constant)
        return torch.addmm(y, self.dense, dense_weight)


    def _padded_rows(self, ids: Tensor) -> Tensor:
        """The plan's table rows in the padded layout, ``(F·M, d)``. A sparse table's gradient must
        hold the rows the batch looked up and no others (lazy Adam steps every row its gradient
        holds), so only those are gathered, sparsely, and the rest of the layout is zeros."""
        if not self.sparse:
            return self.table.index_select(0, self.plan.rows)
        used = torch.zeros(self.plan.rows.shape[0], dtype=torch.bool, device=ids.device)
        used[ids.reshape(-1)] = True
        positions = used.nonzero().squeeze(1)
        rows = sparse_lookup(self.plan.rows.index_select(0, positions), self.table)
        return rows.new_zeros(self.plan.rows.shape[0], self.plan.dim).index_copy(0, positions, rows)


def first_affine(x: Tensor | FactoredInput, weight: Tensor, bias: Tensor | None, constant: slice | None = None) -> Tensor:
    """``bias + x @ weight`` for a plain input (:func:`~mtlkit.nn.input_affine.input_affine`, ``constant``
    as there) or a :class:`FactoredInput` (which carries its own constant block)."""
    if isinstance(x, FactoredInput):
        return x.affine(weight, bias)
    return input_affine(x, weight, bias, constant)


__all__ = ["MIN_DIM", "FactoredInput", "VocabularyPlan", "first_affine", "qualifies"]
