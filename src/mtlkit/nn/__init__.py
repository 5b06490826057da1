"""Building blocks: MLPs, the fused embedding table, the tabular input encoder, sequence pooling, expert banks and gates."""

from mtlkit.nn.embedding import FusedEmbedding, TabularEncoder
from mtlkit.nn.experts import BatchedLinear, ExpertBank
from mtlkit.nn.gates import Gates
from mtlkit.nn.hard_concrete import HardConcrete
from mtlkit.nn.mlp import MLP
from mtlkit.nn.sequence import DinAttention, SequenceField, masked_pool

__all__ = [
    "MLP", "BatchedLinear", "DinAttention", "ExpertBank", "FusedEmbedding", "Gates", "HardConcrete",
    "SequenceField", "TabularEncoder", "masked_pool",
]
