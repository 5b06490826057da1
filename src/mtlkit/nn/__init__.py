"""Building blocks: MLPs, the fused embedding table, the tabular input encoder, expert banks and gates."""

from mtlkit.nn.embedding import FusedEmbedding, TabularEncoder
from mtlkit.nn.experts import BatchedLinear, ExpertBank
from mtlkit.nn.gates import Gates
from mtlkit.nn.hard_concrete import HardConcrete
from mtlkit.nn.mlp import MLP

__all__ = ["MLP", "BatchedLinear", "ExpertBank", "FusedEmbedding", "Gates", "HardConcrete", "TabularEncoder"]
