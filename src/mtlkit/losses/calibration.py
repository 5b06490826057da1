"""Calibration corrections for models trained on data whose negatives were thinned or down-weighted.

He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", ADKDD 2014, §6.2:
when every negative is kept with probability ``w`` (every positive kept), the training data
has ``w`` times the true number of negatives, so the model learns odds ``p/(1 − p)`` that
are **inflated by 1/w**. Multiplying the odds back by ``w`` gives the calibrated probability

    q = p·w / (p·w + 1 − p) = p / (p + (1 − p)/w),

which in logit space is simply ``logit(q) = logit(p) + log w``. Re-weighting every negative
by ``w`` instead of sampling it has the same expected loss, hence the same correction.
(A rate ``w`` of 1 changes nothing; ``w`` < 1 lowers every probability.)

Example:
    >>> import torch
    >>> p = torch.tensor([0.5, 0.1])                 # learned on negatives kept at 10 %
    >>> correct_downsampled(p, 0.1)
    tensor([0.0909, 0.0110])
    >>> torch.sigmoid(correct_downsampled_logits(torch.logit(p), 0.1))
    tensor([0.0909, 0.0110])
"""

from __future__ import annotations

import math

from torch import Tensor


def correct_downsampled(probability: Tensor, rate: float) -> Tensor:
    """``p / (p + (1 − p)/w)``: the probability on the original data, ``w`` = negative keep rate."""
    _check_rate(rate)
    return probability / (probability + (1.0 - probability) / rate)


def correct_downsampled_logits(logits: Tensor, rate: float) -> Tensor:
    """The same correction on logits, ``logit + log w``: exact and stable for any logit."""
    _check_rate(rate)
    return logits + math.log(rate)


def _check_rate(rate: float) -> None:
    if not 0.0 < rate:
        raise ValueError(f"a negative sampling rate (or weight) must be > 0, got {rate!r}")


__all__ = ["correct_downsampled", "correct_downsampled_logits"]
