"""Statistics a reviewer accepts: paired differences over seeds, bootstrap intervals, verdicts, Δm, seeds needed.

For a task and an arm, seed ``s`` gives the arm's test metric ``a_s`` and the single-task
baseline's ``b_s`` (same seed: same split and initial draw). The paired difference, signed so that
positive means the arm is better, is ``d_s = a_s − b_s`` (``b_s − a_s`` for a lower-is-better
metric). We report ``mean(d)`` and its 95% percentile-bootstrap interval (Efron & Tibshirani 1993:
resample the seeds with replacement, 10 000 times, take the 2.5% and 97.5% quantiles of the
means), and the verdict *helps* (interval above 0), *hurts* (below 0) or *no detectable
difference*. With few seeds the bootstrap interval is optimistic (it cannot be wider than the
range of the differences): the seeds-needed figure says how many seeds a paired test needs.

Seeds needed to detect a difference ``δ`` with a two-sided paired test at level ``α`` and power
``1 − β``, from the observed standard deviation ``σ_d`` of the differences (normal approximation):
``n = ⌈((z_{1−α/2} + z_{1−β}) · σ_d / δ)²⌉``.

Δm (Maninis et al., CVPR 2019): the mean over tasks of the relative change against single-task
(:func:`mtlkit.metrics.delta_m`, percent), computed per seed and summarised the same way.

Example:
    >>> paired_differences([0.81, 0.82, 0.80], [0.80, 0.80, 0.80], higher_is_better=True)
    [0.01, 0.02, 0.0]
    >>> seeds_needed(sd=1.0, difference=1.0)      # (1.96 + 0.84)² = 7.85
    8
    >>> c = compare([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], higher_is_better=True)
    >>> c.mean, c.low, c.high, c.verdict
    (1.0, 1.0, 1.0, 'helps')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

HELPS, HURTS, NO_DIFFERENCE = "helps", "hurts", "no detectable difference"


def paired_differences(arm: Sequence[float], baseline: Sequence[float], higher_is_better: bool) -> list[float]:
    """``d_s``, positive where the arm is better; rounded to 12 digits (float noise is no difference)."""
    if len(arm) != len(baseline):
        raise ValueError(f"paired differences need one baseline value per seed: {len(arm)} vs {len(baseline)}")
    sign = 1.0 if higher_is_better else -1.0
    return [round(sign * (a - b), 12) for a, b in zip(arm, baseline)]


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(round(low, 12)), float(round(high, 12))


def verdict(low: float, high: float) -> str:
    if low > 0:
        return HELPS
    if high < 0:
        return HURTS
    return NO_DIFFERENCE


def seeds_needed(sd: float, difference: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Seeds a paired test needs to detect ``difference`` given the differences' standard deviation ``sd``."""
    if difference == 0 or not math.isfinite(sd) or not math.isfinite(difference):
        return None
    if sd == 0:
        return 2
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return max(2, math.ceil((z * sd / abs(difference)) ** 2 - 1e-9))


@dataclass(frozen=True)
class Comparison:
    """One arm against the single-task baseline on one task (or Δm), over the seeds."""

    differences: list[float]
    mean: float
    low: float
    high: float
    verdict: str
    sd: float
    seeds_needed: int | None  # to detect the observed mean difference (80% power, 5% level)

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(differences: Sequence[float], seed: int = 0) -> Comparison:
    d = [float(v) for v in differences]
    mean = float(round(np.mean(d), 12))
    low, high = bootstrap_interval(d, seed=seed)
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
    return Comparison(d, mean, low, high, verdict(low, high), sd, seeds_needed(sd, mean))


def compare(arm: Sequence[float], baseline: Sequence[float], higher_is_better: bool, seed: int = 0) -> Comparison:
    return summarize(paired_differences(arm, baseline, higher_is_better), seed)


def delta_m_per_seed(arm: Mapping[str, Sequence[float]], baseline: Mapping[str, Sequence[float]],
                     higher_is_better: Mapping[str, bool]) -> list[float]:
    """Δm (percent) of each seed over the tasks in ``arm`` (Maninis et al. 2019; :func:`mtlkit.metrics.delta_m`)."""
    from mtlkit.metrics import delta_m

    tasks = list(arm)
    n = len(next(iter(arm.values())))
    return [delta_m({t: arm[t][s] for t in tasks}, {t: baseline[t][s] for t in tasks}, {t: higher_is_better[t] for t in tasks}) for s in range(n)]


__all__ = ["Comparison", "HELPS", "HURTS", "NO_DIFFERENCE", "bootstrap_interval", "compare", "delta_m_per_seed", "paired_differences",
           "seeds_needed", "summarize", "verdict"]
