"""Self-supervised objectives over a behaviour sequence whose items share the item embedding table.

Every clicked item is a word: a small transformer over the sequence's item embeddings (the rows
the candidate ``item_id`` also trains) learns one of

- ``next_item``: SASRec (Kang & McAuley, ICDM 2018, Eq. 6-7): causal self-attention, the state at
  ``t`` predicts item ``t+1``;
- ``masked_item``: BERT4Rec (Sun et al., CIKM 2019, Eq. 7 "Cloze"): a fraction ``mask_rate`` of the
  valid positions is replaced by a learned [mask] vector, bidirectional attention predicts them;

both with a **sampled softmax** over the shared item table (Jean et al., ACL 2015): the true item's
logit ``h · e_y`` against ``K`` uniformly drawn items ``h · e_k`` (shared by the batch; a draw equal
to the true item is masked out), ``L = −log softmax(...)_y`` averaged over the predicted positions
(uniform proposals: the logQ correction is a constant and drops out); or

- ``replaced_item``: ELECTRA's discriminator (Clark et al., ICLR 2020, Eq. 2) on behaviours: a
  fraction ``mask_rate`` of the valid items is replaced by uniformly drawn ones ("should this item be
  in this sequence?"), and a per-position logistic head predicts which,
  ``L = mean_t BCE(D(x̃)_t, [x̃_t ≠ x_t])`` over the valid positions.

Padding (id 0) never enters: a valid position attends only to valid positions (itself always, so
no attention row is empty), padded positions are never predicted nor corrupted. The losses reach
the trainer as auxiliary tasks (:meth:`mtlkit.protocols.TrainableModel.auxiliary_tasks`), which
the balancer weighs like labelled ones.

Example:
    >>> import torch
    >>> table = torch.nn.Embedding(50, 8)
    >>> ids = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]])
    >>> for objective in ("next_item", "masked_item", "replaced_item"):
    ...     head = SequenceObjective(8, max_len=4, objective=objective, mask_rate=0.5)
    ...     loss = head(ids, table, cardinality=50)
    ...     assert loss.dim() == 0 and torch.isfinite(loss)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Objective = Literal["next_item", "masked_item", "replaced_item"]
OBJECTIVES: tuple[str, ...] = ("next_item", "masked_item", "replaced_item")


def sampled_softmax_loss(states: Tensor, targets: Tensor, embed: Callable[[Tensor], Tensor], cardinality: int, negatives: int) -> Tensor:
    """``states (N, D)`` predicting item ids ``targets (N,)``: mean −log softmax over the true item and ``negatives`` sampled ones."""
    if states.shape[0] == 0:
        return states.sum() * 0.0
    sampled = torch.randint(1, max(cardinality, 2), (negatives,), device=states.device)
    positive = (states * embed(targets)).sum(-1, keepdim=True)
    negative = states @ embed(sampled).T
    negative = negative.masked_fill(sampled.unsqueeze(0) == targets.unsqueeze(1), torch.finfo(negative.dtype).min)
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=states.device))


class SequenceObjective(nn.Module):
    """One objective (module docstring) over ``(B, L)`` ids embedded by ``embed`` (the shared table)."""

    def __init__(self, dim: int, max_len: int, objective: Objective = "next_item", negatives: int = 64,
                 mask_rate: float = 0.2, layers: int = 1, heads: int = 1) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown sequence objective {objective!r} ({', '.join(OBJECTIVES)})")
        self.objective, self.negatives, self.mask_rate, self.heads = objective, negatives, mask_rate, heads
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.mask_token = nn.Parameter(torch.zeros(dim)) if objective == "masked_item" else None
        self.discriminator = nn.Linear(dim, 1) if objective == "replaced_item" else None

    def _attention_mask(self, valid: Tensor) -> Tensor:
        """``(B·heads, L, L)`` True = blocked: keys that are padding (or in the future, for next_item), never oneself."""
        length = valid.shape[1]
        allowed = valid.unsqueeze(1).expand(-1, length, -1)
        if self.objective == "next_item":
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=valid.device)
        return (~allowed).repeat_interleave(self.heads, dim=0)

    def _encode(self, inputs: Tensor, valid: Tensor) -> Tensor:
        x = inputs.masked_fill(~valid.unsqueeze(-1), 0.0) + self.position.weight[: inputs.shape[1]]
        return self.encoder(x, mask=self._attention_mask(valid))

    def forward(self, ids: Tensor, embed: Callable[[Tensor], Tensor] | nn.Module, cardinality: int) -> Tensor:
        valid = ids != 0
        if self.objective == "next_item":
            states = self._encode(embed(ids), valid)
            pairs = valid[:, :-1] & valid[:, 1:]
            return sampled_softmax_loss(states[:, :-1][pairs], ids[:, 1:][pairs], embed, cardinality, self.negatives)
        chosen = valid & (torch.rand(ids.shape, device=ids.device) < self.mask_rate)
        if self.objective == "masked_item":
            assert self.mask_token is not None
            inputs = torch.where(chosen.unsqueeze(-1), self.mask_token.to(ids.device).expand(*ids.shape, -1), embed(ids))
            states = self._encode(inputs, valid)
            return sampled_softmax_loss(states[chosen], ids[chosen], embed, cardinality, self.negatives)
        assert self.discriminator is not None
        replacement = torch.randint(1, max(cardinality, 2), ids.shape, device=ids.device)
        corrupted = torch.where(chosen, replacement, ids)
        logits = self.discriminator(self._encode(embed(corrupted), valid)).squeeze(-1)
        labels = (corrupted != ids).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return torch.where(valid, loss, torch.zeros_like(loss)).sum() / valid.sum().clamp(min=1)


__all__ = ["OBJECTIVES", "Objective", "SequenceObjective", "sampled_softmax_loss"]
