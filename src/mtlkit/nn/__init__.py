"""Building blocks: MLPs, embedding tables (fused, per-field; a registry for other backends), the tabular
input encoder, sequence pooling, expert banks and gates."""

from mtlkit.nn.dien import DienPooling
from mtlkit.nn.embedding import TabularEncoder
from mtlkit.nn.embedding_tables import (
    EMBEDDING_TABLES,
    EmbeddingTable,
    FieldRows,
    FusedEmbedding,
    PerFieldEmbedding,
    embedding_tables,
    sparse_weights,
)
from mtlkit.nn.experts import BatchedLinear, ExpertBank
from mtlkit.nn.gates import Gates
from mtlkit.nn.hard_concrete import HardConcrete
from mtlkit.nn.mlp import MLP
from mtlkit.nn.sequence import DinAttention, ObjectiveField, SequenceField, masked_pool
from mtlkit.nn.sequence_objectives import SequenceObjective

__all__ = [
    "EMBEDDING_TABLES", "MLP", "BatchedLinear", "DinAttention", "EmbeddingTable", "ExpertBank", "FieldRows", "FusedEmbedding",
    "DienPooling", "Gates", "HardConcrete", "ObjectiveField", "PerFieldEmbedding", "SequenceField",
    "SequenceObjective", "TabularEncoder", "embedding_tables", "masked_pool",
    "sparse_weights",
]
