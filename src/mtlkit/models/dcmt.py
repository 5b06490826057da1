"""DCMT: a direct entire-space causal multi-task framework for post-click conversion estimation
(Zhu et al., ICDE 2023).

ESMM and ESCM² learn the CVR of unclicked impressions only indirectly. DCMT gives the CVR model a
*twin* tower: the factual tower predicts ``r̂_i`` (trained on clicked rows, the click space ``O``),
the counterfactual tower predicts ``r̂*_i`` for the non-click space ``N``, where an unclicked
impression is treated as a non-conversion whose counterfactual label is ``r*_i = 1 − r_i = 1``.
Both are propensity-weighted with the CTR prediction ``ô_i``, and a counterfactual regulariser
ties the towers together (the two predictions of one impression should sum to one):

    L_CVR = (1/|D|) Σ_{i∈D} [ o_i · e(r_i, r̂_i) / ô_i + (1 − o_i) · e(r*_i, r̂*_i) / (1 − ô_i) ]
            + λ · (1/|D|) Σ_{i∈D} | 1 − (r̂_i + r̂*_i) |                       (DCMT CVR loss)

with ``e`` the binary cross-entropy. The factual tower's ``r̂`` is the served pCVR. As for ESCM²
the inverse propensities are clipped to at most ``ips_clip`` (15) and held constant.

In mtlkit: ``relations: {dcmt: {ctr: ctr, cvr: cvr, ctcvr: ctcvr}}`` (``ctcvr`` optional: an
ESMM-style product trained by its own task loss when given). ``weight`` scales ``L_CVR`` (1.0) and
``constraint`` is ``λ`` (0.1: our default, not a value from the paper).

Example:
    >>> import torch
    >>> factual, counterfactual = torch.tensor([2.0, -1.0]), torch.tensor([-2.0, 1.0])
    >>> clicked, converted, ctr = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])
    >>> loss = dcmt_risk(factual, counterfactual, converted, clicked, ctr, constraint=1.0, clip=15.0)
    >>> round(float(loss), 4)      # r̂ + r̂* = 1 on both rows: no constraint term
    0.4402
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.models.escm2 import inverse_propensity


def dcmt_risk(factual_logit: Tensor, counterfactual_logit: Tensor, converted: Tensor, clicked: Tensor, propensity: Tensor,
              constraint: float, clip: float, rows: Tensor | None = None) -> Tensor:
    """The DCMT CVR loss over the rows ``rows`` (default: all)."""
    rows = torch.ones_like(clicked) if rows is None else rows.to(clicked)
    n = rows.sum().clamp_min(1.0)
    factual = F.binary_cross_entropy_with_logits(factual_logit, converted, reduction="none")
    counterfactual = F.binary_cross_entropy_with_logits(counterfactual_logit, torch.ones_like(converted), reduction="none")
    in_click = clicked * factual * inverse_propensity(propensity, clip)
    in_nonclick = (1 - clicked) * counterfactual * inverse_propensity(1 - propensity, clip)
    gap = (1 - (torch.sigmoid(factual_logit) + torch.sigmoid(counterfactual_logit))).abs()
    return (rows * (in_click + in_nonclick + constraint * gap)).sum() / n


__all__ = ["dcmt_risk"]
