"""Deep Interest Evolution Network pooling (Zhou et al., AAAI 2019): interest extractor + AUGRU.

A behaviour sequence ``e_b[1..T]`` (``(B, L, D)`` item embeddings, oldest first, 0-id padding
masked out) becomes one ``(B, D)`` interest vector in two layers:

1. **Interest extractor** (§ "Interest Extractor Layer"): a GRU over the behaviours,
   ``h_t = GRU(e_b[t], h_{t-1})``. Its states are supervised by the **auxiliary loss** (Eq. 1):
   ``L_aux = −1/N Σ_i Σ_t [log σ(h_t · e_b[t+1]) + log(1 − σ(h_t · ê_b[t+1]))]``, the next real
   behaviour ``e_b[t+1]`` against a sampled one ``ê_b[t+1]`` — drawn from the item vocabulary or
   from another user's history in the batch (:func:`sample_negatives`). Here ``N`` counts the
   valid ``(t, t+1)`` pairs (the mean over pairs), so α does not depend on the history length.
2. **Interest evolving** (Eq. 4 and 7): target attention ``a_t = exp(h_t W e_a) / Σ_j exp(h_j W e_a)``
   over the valid positions, and the AUGRU ``ũ_t = a_t · u_t``,
   ``h'_t = (1 − ũ_t) ∘ h'_{t−1} + ũ_t ∘ h̃'_t``; the last state ``h'_T`` is the pooled interest.

The whole objective is Eq. 2, ``L = L_target + α · L_aux``: :class:`~mtlkit.nn.TabularEncoder`
hands ``L_aux`` to the trainer as an auxiliary task of loss weight α (the balancer sees it).

Padding never enters: masked steps keep the previous state (``torch.where``, so neither the
padding's embedding nor its gradient matters), take no attention weight and form no auxiliary
pair; an empty history pools to the zero vector. The GRUs' hidden width is the embedding width
(the inner products of Eq. 1 need it).

Example:
    >>> import torch
    >>> dien = DienPooling(4)
    >>> hist, target = torch.randn(2, 5, 4), torch.randn(2, 4)
    >>> mask = torch.tensor([[True, True, True, False, False], [False] * 5])
    >>> pooled, aux = dien(hist, target, mask, negatives=torch.randn(2, 5, 4))
    >>> pooled.shape, pooled[1].abs().sum().item(), aux.dim()
    (torch.Size([2, 4]), 0.0, 0)
    >>> hist2 = hist.clone(); hist2[0, 3:] = 7.0           # padded positions changed: nothing changes
    >>> torch.equal(dien(hist2, target, mask)[0], pooled)
    True
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Negatives = Literal["vocabulary", "histories"]


class GatedRecurrentCell(nn.Module):
    """A GRU cell whose update gate can be scaled by an attention score (AUGRU, Eq. 7); unscaled it is the GRU."""

    def __init__(self, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input = nn.Linear(input_dim, 3 * hidden)  # applied to the whole sequence at once
        self.recurrent = nn.Linear(hidden, 3 * hidden)

    def step(self, projected: Tensor, state: Tensor, attention: Tensor | None = None) -> Tensor:
        xr, xz, xn = projected.chunk(3, dim=-1)
        hr, hz, hn = self.recurrent(state).chunk(3, dim=-1)
        reset, update = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        candidate = torch.tanh(xn + reset * hn)
        if attention is not None:
            update = attention.unsqueeze(-1) * update
        return (1.0 - update) * state + update * candidate


def masked_scan(cell: GatedRecurrentCell, inputs: Tensor, mask: Tensor, attention: Tensor | None = None) -> Tensor:
    """All states ``(B, L, H)`` of ``cell`` over ``inputs``; a masked step keeps the previous state."""
    projected = cell.input(inputs)
    state = inputs.new_zeros(inputs.shape[0], cell.hidden)
    states = []
    for t in range(inputs.shape[1]):
        new = cell.step(projected[:, t], state, None if attention is None else attention[:, t])
        state = torch.where(mask[:, t : t + 1], new, state)
        states.append(state)
    return torch.stack(states, dim=1)


def sample_negatives(ids: Tensor, cardinality: int, source: Negatives) -> Tensor:
    """Negative item ids ``(B, L)`` for Eq. 1: uniform over the vocabulary ``1..cardinality−1``, or the
    item at the same position of the next row's history (another user), falling back to the
    vocabulary where that is padding or the positive itself (and for a batch of one)."""
    uniform = torch.randint(1, max(cardinality, 2), ids.shape, device=ids.device)
    if source == "vocabulary" or ids.shape[0] < 2:
        return uniform
    other = ids.roll(1, dims=0)
    return torch.where((other != 0) & (other != ids), other, uniform)


def auxiliary_loss(states: Tensor, positives: Tensor, negatives: Tensor, mask: Tensor) -> Tensor:
    """Eq. 1, averaged over the valid pairs ``(t, t+1)``: ``h_t`` must score ``e[t+1]`` above ``ê[t+1]``."""
    pairs = mask[:, :-1] & mask[:, 1:]
    h = states[:, :-1]
    pos = (h * positives[:, 1:]).sum(-1)
    neg = (h * negatives[:, 1:]).sum(-1)
    loss = -(F.logsigmoid(pos) + F.logsigmoid(-neg))
    loss = torch.where(pairs, loss, torch.zeros_like(loss))
    return loss.sum() / pairs.sum().clamp(min=1)


class DienPooling(nn.Module):
    """Interest extractor GRU → target attention → AUGRU; returns ``(pooled (B, D), L_aux or None)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.extractor = GatedRecurrentCell(dim, dim)
        self.evolution = GatedRecurrentCell(dim, dim)
        self.attention = nn.Linear(dim, dim, bias=False)  # W of Eq. 4, applied to the target e_a

    def attention_weights(self, states: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Eq. 4: a softmax over the valid positions of ``h_t W e_a``; exactly 0 on padding."""
        scores = torch.einsum("blh,bh->bl", states, self.attention(target))
        scores = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=1)
        return torch.where(mask, scores, torch.zeros_like(scores))

    def forward(self, history: Tensor, target: Tensor, mask: Tensor, negatives: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        history = history.masked_fill(~mask.unsqueeze(-1), 0.0)
        states = masked_scan(self.extractor, history, mask)
        weights = self.attention_weights(states, target, mask)
        evolved = masked_scan(self.evolution, states, mask, weights)
        aux = auxiliary_loss(states, history, negatives, mask) if negatives is not None else None
        return evolved[:, -1], aux


__all__ = ["DienPooling", "GatedRecurrentCell", "Negatives", "auxiliary_loss", "masked_scan", "sample_negatives"]
