"""One embedding table for all categorical fields, and the encoder that feeds backbones.

:class:`TabularEncoder` concatenates the flattened field embeddings with the numeric columns into
the vector every backbone consumes. The embeddings come from a table of
:mod:`mtlkit.nn.embedding_tables` (``table="fused"`` by default: every field's rows in a single
``nn.Embedding`` with per-field offsets, so ``F`` fields are one gather); another backend, such as
sharded tables, plugs in there.

Sequence features (``inputs["seq:<name>"]``, ``(B, L)`` ids, 0 = padding) are embedded from the same
fused table — from the rows of a categorical field when they share its vocabulary (so an item id and
the same id in the history train one row, from both uses), else from rows of their own — pooled by
:mod:`mtlkit.nn.sequence` (mean, sum or DIN attention against a categorical field, Zhou et al.,
KDD 2018, Eq. 3) or :mod:`mtlkit.nn.dien` (DIEN, Zhou et al., AAAI 2019) and appended after the
numeric columns. ``inputs["bias"]`` is never read here.

For a backbone whose first layer is one affine map (MoE experts and gates, a shared bottom),
:meth:`TabularEncoder.factored` hands over the fields whose vocabulary is small next to the batch
as ids, so that the map computes their share in vocabulary space (:mod:`mtlkit.nn.vocabulary_affine`)
and the full encoder output is never built.

Self-supervised losses computed from the inputs — DIEN's auxiliary loss (Eq. 1) and the sequence
objectives of :mod:`mtlkit.nn.sequence_objectives` (``objectives``) — are computed in training
mode only and handed out by :meth:`TabularEncoder.auxiliary_losses`, one auxiliary task each
(:meth:`TabularEncoder.auxiliary_tasks`: ``dien:<sequence>`` with weight α, and the objectives' names).

Example:
    >>> import torch
    >>> enc = TabularEncoder(cardinalities=[3, 5], numeric_dim=2, embedding_dim=4)
    >>> x = enc({"categorical": torch.tensor([[0, 4]]), "numeric": torch.zeros(1, 2)})
    >>> x.shape, enc.output_dim
    (torch.Size([1, 10]), 10)
    >>> hist = SequenceField("seq:hist", pooling="din", shared_field=1, target=1)
    >>> enc = TabularEncoder([3, 5], numeric_dim=0, embedding_dim=4, sequences=[hist])
    >>> enc({"categorical": torch.tensor([[0, 4]]), "seq:hist": torch.tensor([[4, 2, 0]])}).shape
    torch.Size([1, 12])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.dien import DienPooling, sample_negatives
from mtlkit.nn.embedding_tables import EMBEDDING_TABLES, FusedEmbedding
from mtlkit.nn.sequence import DinAttention, ObjectiveField, SequenceField, masked_pool
from mtlkit.nn.sequence_objectives import SequenceObjective
from mtlkit.nn.vocabulary_affine import FactoredInput, VocabularyPlan, qualifies
from mtlkit.protocols import AuxiliaryTask

if TYPE_CHECKING:
    from mtlkit.data.schema import FittedSchema


class TabularEncoder(nn.Module):
    def __init__(
        self,
        cardinalities: Sequence[int],
        numeric_dim: int,
        embedding_dim: int,
        sequences: Sequence[SequenceField] = (),
        table: str = "fused",
        copies: int = 1,
        objectives: Sequence[ObjectiveField] = (),
        max_lengths: Sequence[int] = (),
        storage: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.num_categorical = len(cardinalities)
        self.copies = copies
        own = [s.cardinality for s in sequences if s.shared_field is None]
        # ``copies`` independent embeddings per categorical field (STEM's shared and task-specific
        # tables): copy c of field f is table field c·F + f, all in the one registered table.
        fields = [*cardinalities, *(list(cardinalities) * (copies - 1)), *own]
        # storage: the table weights' dtype (bf16 halves their memory; lookups return fp32 either way)
        self.embedding = EMBEDDING_TABLES.get(table)(fields, embedding_dim, dtype=storage) if fields else None
        self.numeric_dim = numeric_dim
        self.sequences = list(sequences)
        self._sequence_fields: list[int] = []  # the fused-table field each sequence reads
        next_own = len(cardinalities) * copies
        attention: dict[str, nn.Module] = {}
        for i, seq in enumerate(self.sequences):
            if (seq.shared_field is None) == (seq.cardinality <= 0):
                raise ConfigError(f"sequence {seq.key!r}: give either its own cardinality or shared_field")
            for ref in (seq.shared_field, seq.target):
                if ref is not None and not 0 <= ref < len(cardinalities):
                    raise ConfigError(f"sequence {seq.key!r}: categorical field {ref} out of range (0..{len(cardinalities) - 1})")
            if (seq.pooling in ("din", "dien")) != (seq.target is not None):
                raise ConfigError(f"sequence {seq.key!r}: a target field is required with din/dien pooling and only allowed with it")
            if seq.shared_field is None:
                self._sequence_fields.append(next_own)
                next_own += 1
            else:
                self._sequence_fields.append(seq.shared_field)
            if seq.pooling == "din":
                attention[str(i)] = DinAttention(embedding_dim, seq.attention_hidden, normalize=seq.normalize)
            elif seq.pooling == "dien":
                attention[str(i)] = DienPooling(embedding_dim)
        self.attention = nn.ModuleDict(attention)
        self._cardinalities = list(fields)
        self.objectives = list(objectives)
        heads: dict[str, nn.Module] = {}
        for objective in self.objectives:
            if not 0 <= objective.sequence < len(self.sequences):
                raise ConfigError(f"objective {objective.name!r}: sequence {objective.sequence} out of range")
            length = max_lengths[objective.sequence] if max_lengths else 512
            heads[objective.name] = SequenceObjective(embedding_dim, length, objective.objective, objective.negatives,  # type: ignore[arg-type]
                                                      objective.mask_rate, objective.layers, objective.heads)
        self.objective_heads = nn.ModuleDict(heads)
        self._auxiliary: dict[str, Tensor] = {}
        self.output_dim = (len(cardinalities) * copies + len(self.sequences)) * embedding_dim + numeric_dim
        start = len(cardinalities) * copies * embedding_dim
        #: The output's numeric columns (after every embedding copy, before the pooled sequences).
        self.numeric_columns = slice(start, start + numeric_dim)
        # Per batch size, the fields in vocabulary space (decided once, not per step); per field set, its plan.
        self._qualifying: dict[tuple[int, bool], tuple[int, ...]] = {}
        self._plans: dict[tuple[tuple[int, ...], torch.device], tuple[VocabularyPlan, Tensor, Tensor]] = {}

    def auxiliary_tasks(self) -> list[AuxiliaryTask]:
        """DIEN's auxiliary loss per ``dien`` sequence with α > 0 (weight α), then the objectives."""
        dien = [AuxiliaryTask(f"dien:{seq.key.removeprefix('seq:')}", seq.aux_weight)
                for seq in self.sequences if seq.pooling == "dien" and seq.aux_weight > 0]
        return [*dien, *(AuxiliaryTask(o.name, o.weight) for o in self.objectives)]

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """The auxiliary losses of the last training forward (cleared when read)."""
        losses, self._auxiliary = self._auxiliary, {}
        return losses

    @classmethod
    def from_schema(cls, schema: FittedSchema, embedding_dim: int, table: str = "fused", copies: int = 1,
                    objectives: Sequence[ObjectiveField] = (), storage: torch.dtype = torch.float32) -> TabularEncoder:
        """The encoder for a fitted schema: categoricals, numerics and its sequence features."""
        index = {f.name: i for i, f in enumerate(schema.categorical)}
        fields = [
            SequenceField(
                key=s.input_key, pooling=s.pooling,  # type: ignore[arg-type]
                cardinality=s.cardinality,
                shared_field=index[s.share_vocabulary_with] if s.share_vocabulary_with else None,
                target=index[s.target] if s.target else None,
                normalize=s.normalize, attention_hidden=tuple(s.attention_hidden),
                **({"aux_weight": s.dien.get("aux_weight", 1.0), "negatives": s.dien.get("negatives", "vocabulary")} if s.dien else {}),
            )
            for s in schema.sequences
        ]
        return cls(schema.cardinalities, schema.numeric_dim, embedding_dim, fields, table, copies, objectives,
                   [s.max_len for s in schema.sequences], storage)

    def factored(self, inputs: Mapping[str, Tensor], constant_numeric: bool = False, every_field: bool = False) -> FactoredInput | None:
        """The output for a backbone whose first affine map reads it factored: the fields whose
        vocabulary is small next to the batch stay ids, their columns computed in vocabulary space
        (:mod:`mtlkit.nn.vocabulary_affine`); the other fields, the numeric columns and the pooled
        sequences as usual. None when no field qualifies or the layout does not allow it: embedding
        copies, a table not in fp32, or not ``fused``.
        ``constant_numeric``: the numeric columns need no input gradient; ``every_field``: every
        field in vocabulary space, whatever its size (for benchmarks)."""
        table = self.embedding
        if (not isinstance(table, FusedEmbedding) or table.table.weight.dtype != torch.float32
                or self.copies != 1 or not self.num_categorical):
            return None
        ids = inputs["categorical"]
        batch = ids.shape[0]
        fields = self._qualifying.get((batch, every_field))
        if fields is None:
            fields = self._qualifying[(batch, every_field)] = tuple(
                f for f, rows in enumerate(table.cardinalities[: self.num_categorical]) if every_field or qualifies(rows, batch, table.dim))
        if not fields:
            return None
        key = (fields, ids.device)
        if key not in self._plans:
            self._plans[key] = self._plan(table, fields, ids.device)
        plan, kept, dense_columns = self._plans[key]
        parts = [table.fields(ids.index_select(1, kept), kept).flatten(1)] if len(kept) else []
        if self.numeric_dim:
            parts.append(inputs["numeric"])
        # DIN/DIEN attend against a categorical field's embeddings: looked up on their own, (B, D)
        parts += self._sequence_parts(inputs, lambda field: table.field(ids[:, field], field))
        dense = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1) if parts else ids.new_zeros(batch, 0, dtype=torch.float32)
        numeric_start = len(kept) * table.dim
        constant = slice(numeric_start, numeric_start + self.numeric_dim) if constant_numeric and self.numeric_dim else None
        return FactoredInput(plan, table.table.weight, ids, dense, dense_columns, constant, table.sparse_gradients)

    def _plan(self, table: FusedEmbedding, fields: tuple[int, ...], device: torch.device) -> tuple[VocabularyPlan, Tensor, Tensor]:
        """The vocabulary plan of ``fields``, the other fields and the columns of ``x`` they and the numerics fill."""
        d = table.dim
        offsets = [0, *itertools.accumulate(table.cardinalities)]  # from Python ints: the table may live on meta
        plan = VocabularyPlan.build(table.cardinalities, offsets, fields, [f * d for f in fields], d)
        kept = [f for f in range(self.num_categorical) if f not in fields]
        columns = [c for f in kept for c in range(f * d, (f + 1) * d)] + list(range(self.numeric_columns.start, self.output_dim))
        return (plan.to(device), torch.tensor(kept, dtype=torch.long, device=device),
                torch.tensor(columns, dtype=torch.long, device=device))

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        parts = []
        categorical = None
        if self.num_categorical:
            assert self.embedding is not None
            ids = inputs["categorical"]
            all_copies = self.embedding(ids.repeat(1, self.copies) if self.copies > 1 else ids)  # (B, copies·F, D)
            categorical = all_copies[:, : self.num_categorical]  # copy 0: what sequences attend against
            parts.append(all_copies.flatten(1))
        if self.numeric_dim:
            parts.append(inputs["numeric"])

        def target(field: int) -> Tensor:
            assert categorical is not None  # a din/dien sequence names a categorical field
            return categorical[:, field]

        parts += self._sequence_parts(inputs, target)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _sequence_parts(self, inputs: Mapping[str, Tensor], target: Callable[[int], Tensor]) -> list[Tensor]:
        """The pooled sequence columns, in order (``target(f)``: categorical field ``f``'s ``(B, D)``
        embeddings, what DIN/DIEN attend against); in training, the auxiliary losses as a side effect."""
        parts: list[Tensor] = []
        auxiliary = self.training and torch.is_grad_enabled()
        for i, (seq, field) in enumerate(zip(self.sequences, self._sequence_fields)):
            ids = inputs[seq.key]
            assert self.embedding is not None
            history, mask = self.embedding.field(ids, field), ids != 0
            if seq.pooling == "din":
                assert seq.target is not None
                parts.append(self.attention[str(i)](history, target(seq.target), mask))
            elif seq.pooling == "dien":
                assert seq.target is not None
                negatives = None
                if auxiliary and seq.aux_weight > 0:
                    negatives = self.embedding.field(sample_negatives(ids, self._cardinalities[field], seq.negatives), field)  # type: ignore[arg-type]
                pooled, aux = self.attention[str(i)](history, target(seq.target), mask, negatives)
                parts.append(pooled)
                if aux is not None:
                    self._auxiliary[f"dien:{seq.key.removeprefix('seq:')}"] = aux
            else:
                parts.append(masked_pool(history, mask, seq.pooling))
        if auxiliary:
            for objective in self.objectives:
                field = self._sequence_fields[objective.sequence]
                table = self.embedding
                assert table is not None
                self._auxiliary[objective.name] = self.objective_heads[objective.name](
                    inputs[self.sequences[objective.sequence].key], lambda ids, f=field, t=table: t.field(ids, f), self._cardinalities[field])
        return parts
