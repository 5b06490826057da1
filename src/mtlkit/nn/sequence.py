"""Pooling of padded id sequences: masked mean/sum, and DIN target attention.

Sequences arrive as ``(B, L)`` ids with 0 for padding (and for unseen items, which the schema maps
to the same id), embedded to ``(B, L, D)``. Every pooling here ignores positions where the id is 0:
their embeddings are zeroed before use, so neither their values nor their gradients matter, and an
empty history pools to the zero vector (never NaN).

:class:`DinAttention` is the local activation unit of Deep Interest Network (Zhou et al., KDD 2018,
Eq. 3): ``v_U(A) = Σ_j a(e_j, v_A) · e_j``, where ``a`` is an MLP on
``[e_j, v_A, e_j − v_A, e_j ⊙ v_A]`` (the paper's Fig. 2 out-product, as in its released code)
ending in one linear output. As in the paper the weights are NOT softmax-normalised, so the pooled
vector keeps the intensity of the user's interest (more matching items → a larger vector);
``normalize=True`` applies a softmax over the valid positions instead, as the released code does.

Example:
    >>> import torch
    >>> emb = torch.ones(2, 3, 4)
    >>> mask = torch.tensor([[True, True, False], [False, False, False]])
    >>> masked_pool(emb, mask, "mean")[:, 0].tolist()   # the empty history gives 0, not NaN
    [1.0, 0.0]
    >>> din = DinAttention(4)
    >>> pooled, weights = din(emb, torch.ones(2, 4), mask), din.weights(emb, torch.ones(2, 4), mask)
    >>> pooled.shape, weights[0, 2].item(), weights[1].abs().sum().item()
    (torch.Size([2, 4]), 0.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtlkit.nn.mlp import MLP

Pooling = Literal["mean", "sum", "din", "dien"]


def masked_pool(embeddings: Tensor, mask: Tensor, mode: Literal["mean", "sum"]) -> Tensor:
    """``(B, L, D)`` embeddings and ``(B, L)`` bool mask (True = a real item) → ``(B, D)``."""
    summed = embeddings.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)
    if mode == "sum":
        return summed
    # clamp: an empty history divides 0 by 1, not by 0.
    count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(summed.dtype)
    return summed / count


class DinAttention(nn.Module):
    """DIN target attention: weight each history item by an MLP of it and the candidate, then sum."""

    def __init__(self, dim: int, hidden: Sequence[int] = (36,), activation: str = "prelu", normalize: bool = False) -> None:
        super().__init__()
        self.mlp = MLP(4 * dim, hidden, activation=activation)
        self.score = nn.Linear(self.mlp.output_dim, 1)
        self.normalize = normalize

    def weights(self, history: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """``history (B, L, D)``, ``target (B, D)``, ``mask (B, L)`` → weights ``(B, L)``, exactly 0 on padding."""
        history = history.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding content never leaks in, even via 0·NaN
        query = target.unsqueeze(1).expand_as(history)
        features = torch.cat([history, query, history - query, history * query], dim=-1)
        scores = self.score(self.mlp(features)).squeeze(-1)
        if self.normalize:
            # A finite fill (not -inf) keeps an all-padding row free of NaN in forward and backward.
            scores = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=1)
        return torch.where(mask, scores, torch.zeros_like(scores))

    def forward(self, history: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """The pooled ``(B, D)`` interest vector ``Σ_j a_j · e_j`` over the valid positions."""
        weights = self.weights(history, target, mask)
        return torch.bmm(weights.unsqueeze(1), history.masked_fill(~mask.unsqueeze(-1), 0.0)).squeeze(1)


@dataclass(frozen=True)
class SequenceField:
    """How the encoder embeds and pools one sequence input.

    ``cardinality`` rows of its own in the fused table, or ``shared_field``: the index of the
    categorical field whose rows it reuses (an item id and the same id in the history share one
    row). ``target``: the categorical field index of the candidate, for ``pooling="din"`` and
    ``"dien"``; ``aux_weight`` (α) and ``negatives``: DIEN's auxiliary loss (:mod:`mtlkit.nn.dien`),
    none when α = 0.
    """

    key: str
    pooling: Pooling = "mean"
    cardinality: int = 0
    shared_field: int | None = None
    target: int | None = None
    normalize: bool = False
    attention_hidden: tuple[int, ...] = (36,)
    aux_weight: float = 1.0
    negatives: str = "vocabulary"


@dataclass(frozen=True)
class ObjectiveField:
    """A self-supervised objective (:mod:`mtlkit.nn.sequence_objectives`) over sequence ``sequence``
    (an index into the encoder's sequences), trained as the auxiliary task ``name`` of loss weight ``weight``."""

    name: str
    sequence: int
    objective: str = "next_item"
    weight: float = 1.0
    negatives: int = 64
    mask_rate: float = 0.2
    layers: int = 1
    heads: int = 1
