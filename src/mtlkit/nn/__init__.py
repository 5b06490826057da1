"""Building blocks: MLPs, the fused embedding table and the tabular input encoder."""

from mtlkit.nn.embedding import FusedEmbedding, TabularEncoder
from mtlkit.nn.mlp import MLP

__all__ = ["MLP", "FusedEmbedding", "TabularEncoder"]
