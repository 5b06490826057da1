"""ESMM: the entire-space multi-task model (Ma et al., SIGIR 2018, Eq. 1-3).

Conversion-rate models trained on clicked impressions only suffer sample-selection bias and
data sparsity. ESMM instead learns pCVR through two losses over *all* impressions:

    pCTCVR = pCTR × pCVR                                          (Eq. 1)
    L = Σ_i BCE(click_i, pCTR_i) + Σ_i BCE(click_i·buy_i, pCTCVR_i)  (Eq. 3)

with no direct CVR loss; the CTR and CVR towers share the embeddings (here: the whole encoder
and backbone). This module gives the CTCVR output as a *logit* so that the ordinary stable
BCE-with-logits loss applies: with ``log p = logσ(a) + logσ(b)``,
``logit(p) = log p − log(1 − p)`` and ``log(1 − p) = log(−expm1(log p))``.

In mtlkit ESMM is a task relation that works on any backbone: declare three tasks, e.g.
``ctr`` (label click), ``cvr`` (label buy, ``mask: {column: click}``: evaluated on clicked
impressions only) and ``ctcvr`` (label click·buy, all impressions), and the relation
``esmm: [{ctr: ctr, cvr: cvr, ctcvr: ctcvr}]``. The ``cvr`` task then gets no loss of its own
and ``ctcvr`` gets no head of its own.

Example:
    >>> import torch
    >>> a, b = torch.tensor([0.3, -2.0]), torch.tensor([1.0, 0.5])
    >>> p = torch.sigmoid(product_logit(a, b))
    >>> torch.allclose(p, torch.sigmoid(a) * torch.sigmoid(b))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def product_logit(*logits: Tensor) -> Tensor:
    """The logit of ``Π σ(logit_i)``, computed in log space (no overflow, no log(0))."""
    log_p = torch.stack([F.logsigmoid(x) for x in logits]).sum(0)
    # p < 1 strictly for finite logits; the clamp only guards log(0) when p rounds to 1.
    log_not_p = torch.log(-torch.expm1(log_p).clamp_max(-torch.finfo(log_p.dtype).tiny))
    return log_p - log_not_p


__all__ = ["product_logit"]
