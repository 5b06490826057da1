"""Ranking losses within a group (a request, a user): pairwise (RankNet / BPR), listwise (softmax),
and JRC (joint ranking and calibration). They need the task's ``group_column``.

Rows are compared only with rows of the same group *in the same batch* (as in EasyRec and
TorchEasyRec): keep a group's rows together (no shuffling across a request, or batches large
enough to hold whole requests) for the comparisons to be many. Each costs ``O(B²)`` memory for a
batch of ``B`` rows (a same-group mask), without a host sync.

- ``pairwise`` (Burges et al., "Learning to Rank using Gradient Descent", ICML 2005, RankNet
  Eq. 3 with target probability 1; for 0/1 labels it is BPR, Rendle et al., UAI 2009, Eq. 7):
  ``L = Σ_{(i,j): g_i = g_j, y_i > y_j} w_i w_j · log(1 + exp(−σ(s_i − s_j))) / Σ w_i w_j``.
- ``listwise`` (Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach", ICML
  2007, ListNet with the top-one probability; the softmax cross-entropy over a list):
  ``L_g = −Σ_{i∈g} q_i log softmax_g(s/τ)_i`` with ``q_i = y_i w_i / Σ_{j∈g} y_j w_j``, averaged
  over the groups with a positive label.
- ``jrc`` (Sheng et al., "Joint Optimization of Ranking and Calibration with Contextualized
  Hybrid Model", KDD 2023, Eq. 5-7): two logits per row ``(s⁰, s¹)``; the served probability is
  ``softmax(s)₁ = σ(s¹ − s⁰)``. ``L = α · L_calib + (1 − α) · L_rank`` with
  ``L_calib = −log softmax(s_i)_{y_i}`` and ``L_rank = −log( exp(s_i^{y_i}) / Σ_{j∈g(i)} exp(s_j^{y_i}) )``:
  a positive competes with its group's rows on ``s¹``, a negative on ``s⁰``.

Example:
    >>> import torch
    >>> s, y = torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    >>> g, w = torch.tensor([0, 0, 1, 1]), torch.ones(4)
    >>> round(float(pairwise(s, y, w, g)), 4)      # pairs (0 > 1) and (3 > 2): log(1 + e⁻²)
    0.1269
    >>> round(float(listwise(s, y, w, g)), 4)      # −log softmax within each request, averaged
    0.1269
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mtlkit.losses.registry import BATCH_LOSSES, GROUP_LOSSES, LOSS_OPTIONS, LOSS_OUTPUT_DIM, LOSSES


class PairwiseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sigma: float = Field(default=1.0, gt=0.0)  # RankNet's σ: the slope of the pairwise sigmoid


class ListwiseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float = Field(default=1.0, gt=0.0)


class JRCOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)  # the calibration share (the paper's α)


def _same_group(group: Tensor, weight: Tensor) -> Tensor:
    """``(B, B)`` bool: both rows count and share a group."""
    counts = weight > 0
    return (group[:, None] == group[None, :]) & counts[:, None] & counts[None, :]


def _group_log_softmax(scores: Tensor, same: Tensor) -> Tensor:
    """``log softmax`` of each row's score within its group: ``s_i − logsumexp_{j∈g(i)} s_j``."""
    masked = torch.where(same, scores[None, :].expand_as(same), torch.full_like(same, -torch.inf, dtype=scores.dtype))
    lse = torch.logsumexp(masked, dim=1)
    return scores - torch.where(torch.isfinite(lse), lse, scores)  # a row that does not count: 0


@LOSSES.register("pairwise")
def pairwise(logits: Tensor, target: Tensor, weight: Tensor, group: Tensor, sigma: float = 1.0) -> Tensor:
    """RankNet / BPR over the ordered pairs of each group (see the module docstring)."""
    same = _same_group(group, weight)
    better = same & (target[:, None] > target[None, :])
    pair_weight = (weight[:, None] * weight[None, :]) * better.to(logits.dtype)
    loss = F.softplus(-sigma * (logits[:, None] - logits[None, :]))
    return (loss * pair_weight).sum() / pair_weight.sum().clamp_min(1e-12)


@LOSSES.register("listwise")
def listwise(logits: Tensor, target: Tensor, weight: Tensor, group: Tensor, temperature: float = 1.0) -> Tensor:
    """Softmax cross-entropy over each group, the labels (gains ≥ 0) normalised per group."""
    same = _same_group(group, weight)
    gain = target.clamp_min(0) * weight
    group_gain = same.to(logits.dtype) @ gain
    q = torch.where(group_gain > 0, gain / group_gain.clamp_min(1e-30), torch.zeros_like(gain))
    log_p = _group_log_softmax(logits / temperature, same)
    return -(q * log_p).sum() / q.sum().clamp_min(1e-12)


@LOSSES.register("jrc")
def jrc(logits: Tensor, target: Tensor, weight: Tensor, group: Tensor, alpha: float = 0.5) -> Tensor:
    """Joint ranking and calibration on two logits per row, ``logits`` ``(B, 2)``."""
    label = target.long().clamp(0, 1)
    calib = F.cross_entropy(logits, label, reduction="none")
    same = _same_group(group, weight)
    log_p = torch.stack([_group_log_softmax(logits[:, k], same) for k in (0, 1)], dim=1)
    rank = -log_p.gather(1, label[:, None]).squeeze(1)
    total = weight.sum().clamp_min(1e-12)
    return alpha * (calib * weight).sum() / total + (1 - alpha) * (rank * weight).sum() / total


LOSS_OPTIONS.update(pairwise=PairwiseOptions, listwise=ListwiseOptions, jrc=JRCOptions)
BATCH_LOSSES.update({"pairwise", "listwise", "jrc"})
GROUP_LOSSES.update({"pairwise", "listwise", "jrc"})
LOSS_OUTPUT_DIM["jrc"] = 2

__all__ = ["JRCOptions", "ListwiseOptions", "PairwiseOptions", "jrc", "listwise", "pairwise"]
