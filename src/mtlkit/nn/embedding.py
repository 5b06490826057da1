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
KDD 2018, Eq. 3) and appended after the numeric columns. ``inputs["bias"]`` is never read here.

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

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nn.embedding_tables import EMBEDDING_TABLES
from mtlkit.nn.sequence import DinAttention, SequenceField, masked_pool

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
        self.embedding = EMBEDDING_TABLES.get(table)(fields, embedding_dim) if fields else None
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
            if (seq.pooling == "din") != (seq.target is not None):
                raise ConfigError(f"sequence {seq.key!r}: a target field is required with din pooling and only allowed with it")
            if seq.shared_field is None:
                self._sequence_fields.append(next_own)
                next_own += 1
            else:
                self._sequence_fields.append(seq.shared_field)
            if seq.pooling == "din":
                attention[str(i)] = DinAttention(embedding_dim, seq.attention_hidden, normalize=seq.normalize)
        self.attention = nn.ModuleDict(attention)
        self.output_dim = (len(cardinalities) * copies + len(self.sequences)) * embedding_dim + numeric_dim

    @classmethod
    def from_schema(cls, schema: FittedSchema, embedding_dim: int, table: str = "fused", copies: int = 1) -> TabularEncoder:
        """The encoder for a fitted schema: categoricals, numerics and its sequence features."""
        index = {f.name: i for i, f in enumerate(schema.categorical)}
        fields = [
            SequenceField(
                key=s.input_key, pooling=s.pooling,  # type: ignore[arg-type]
                cardinality=s.cardinality,
                shared_field=index[s.share_vocabulary_with] if s.share_vocabulary_with else None,
                target=index[s.target] if s.target else None,
                normalize=s.normalize, attention_hidden=tuple(s.attention_hidden),
            )
            for s in schema.sequences
        ]
        return cls(schema.cardinalities, schema.numeric_dim, embedding_dim, fields, table, copies)

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
        for i, (seq, field) in enumerate(zip(self.sequences, self._sequence_fields)):
            ids = inputs[seq.key]
            assert self.embedding is not None
            history, mask = self.embedding.field(ids, field), ids != 0
            if seq.pooling == "din":
                assert categorical is not None and seq.target is not None
                parts.append(self.attention[str(i)](history, categorical[:, seq.target], mask))
            else:
                parts.append(masked_pool(history, mask, seq.pooling))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
