"""ESCM²: the entire-space counterfactual multi-task model (Wang et al., SIGIR 2022).

ESMM learns pCVR only through pCTCVR = pCTR × pCVR; ESCM² adds a *counterfactual risk* on the
CVR tower that estimates the CVR loss over the entire exposure space ``D`` from the clicked rows
(``o_i = 1``), with the CTR tower's prediction ``ô_i`` as the propensity:

    L = L_CTR + λ_c · L_CVR + λ_g · L_CTCVR                               (total risk)
    L_CVR^IPS = (1/|D|) Σ_{i∈D} o_i · e_i / ô_i                           (IPS risk)
    L_CVR^DR  = (1/|D|) Σ_{i∈D} [ ê_i + o_i · (e_i − ê_i) / ô_i ]        (DR risk)
    L_IMP     = (1/|D|) Σ_{i∈D} o_i · (e_i − ê_i)² / ô_i                 (imputation risk, DR)

with ``e_i = BCE(r_i, r̂_i)`` the CVR tower's loss on a clicked row. ``1/ô_i`` is clipped to at
most ``ips_clip`` (15, the clip of the authors' released code) and the propensity is held
constant (stop-gradient, as in that code): the CTR tower learns from ``L_CTR`` and ``L_CTCVR``
only. For DR the imputed error is ``ê_i = BCE(r̃_i, r̂_i)`` with ``r̃_i`` an imputation tower's
pseudo-label (the joint-learning form of the doubly robust estimator, Wang et al., ICML 2019,
which ESCM²'s DR builds on): ``ê`` depends on the CVR tower, so unclicked rows train it too,
while ``L_IMP`` trains only the imputation tower (``e`` and ``r̂`` held constant there).

In mtlkit: ``relations: {escm2: {ctr: ctr, cvr: cvr, ctcvr: ctcvr, estimator: ips|dr}}`` on any
shared backbone. ``λ_c`` is ``weight`` (default 0.1) and ``λ_g`` the ctcvr task's ``loss_weight``;
the cvr task's training loss is ``λ_c · L_CVR (+ λ_c · L_IMP)`` over all labelled impressions of
the batch, and it is evaluated like ESMM's CVR (its predictions exist on every impression).

Example:
    >>> import torch
    >>> cvr_logit, ctr_prob = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.5, 0.01, 0.5])
    >>> clicked, converted = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])
    >>> inverse_propensity(ctr_prob, clip=15.0).tolist()         # 1/0.01 = 100 is clipped to 15
    [2.0, 15.0, 2.0]
    >>> round(float(ips_risk(cvr_logit, converted, clicked, ctr_prob, clip=15.0)), 4)  # (2 + 15)·log 2 / 3
    3.9278
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def inverse_propensity(propensity: Tensor, clip: float) -> Tensor:
    """``min(1/ô, clip)``, held constant (no gradient into the propensity model)."""
    return torch.reciprocal(propensity.detach().clamp_min(1e-12)).clamp_max(clip)


def ips_risk(cvr_logit: Tensor, converted: Tensor, clicked: Tensor, propensity: Tensor, clip: float,
             rows: Tensor | None = None) -> Tensor:
    """``(1/|D|) Σ o_i e_i / ô_i`` over the rows ``rows`` (default: all)."""
    rows = torch.ones_like(clicked) if rows is None else rows.to(clicked)
    error = F.binary_cross_entropy_with_logits(cvr_logit, converted, reduction="none")
    weighted = rows * clicked * error * inverse_propensity(propensity, clip)
    return weighted.sum() / rows.sum().clamp_min(1.0)


def dr_risks(cvr_logit: Tensor, converted: Tensor, clicked: Tensor, propensity: Tensor, imputed_logit: Tensor,
             clip: float, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(L_CVR^DR, L_IMP)``; ``imputed_logit`` is the imputation tower's pseudo-label logit ``r̃``."""
    rows = torch.ones_like(clicked) if rows is None else rows.to(clicked)
    n = rows.sum().clamp_min(1.0)
    weight = inverse_propensity(propensity, clip)
    error = F.binary_cross_entropy_with_logits(cvr_logit, converted, reduction="none")
    pseudo = torch.sigmoid(imputed_logit)
    imputed = F.binary_cross_entropy_with_logits(cvr_logit, pseudo.detach(), reduction="none")  # ê: trains the CVR tower
    dr = (rows * (imputed + clicked * (error - imputed) * weight)).sum() / n
    imputed_for_tower = F.binary_cross_entropy_with_logits(cvr_logit.detach(), pseudo, reduction="none")  # ê: trains r̃
    imputation = (rows * clicked * (error.detach() - imputed_for_tower) ** 2 * weight).sum() / n
    return dr, imputation


__all__ = ["dr_risks", "inverse_propensity", "ips_risk"]
