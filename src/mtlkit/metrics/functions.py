"""Vectorised metrics over a whole evaluation split.

Metrics run once per evaluation on host arrays (one device sync per split), never per step.
Ranking metrics are tie-aware: tied scores share their average rank, which is what the
Mann-Whitney form of AUC requires.

Example:
    >>> import numpy as np
    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    >>> gauc(np.array([0.1, 0.9, 0.2, 0.3, 0.5]), np.array([0, 1, 1, 0, 1]),
    ...      groups=np.array([7, 7, 8, 8, 9]))   # group 9 has one class and is skipped
    0.5
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtlkit.metrics.ranking import ndcg_at
from mtlkit.registry import Registry

_EPS = 1e-15


def average_ranks(sorted_keys: np.ndarray) -> np.ndarray:
    """1-based ranks of an already sorted array, ties given their average rank."""
    n = sorted_keys.shape[0]
    if n == 0:
        return np.zeros(0)
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=change[1:])
    run_id = np.cumsum(change) - 1
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    return ((starts + ends + 1) / 2.0)[run_id]


def auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Area under the ROC curve (Mann-Whitney U); NaN when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = labels.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = average_ranks(scores[order])
    rank_sum = ranks[labels[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Group AUC: per-group AUC averaged with group-size weights.

    Groups (users, requests) holding a single class have no AUC and are skipped, as in
    the DIN paper (Zhou et al., KDD 2018, Eq. 1 with impression weights).
    """
    if groups is None:
        raise ValueError("gauc needs a group column (set `group_column` on the task)")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    _, group_ids = np.unique(np.asarray(groups), return_inverse=True)
    order = np.lexsort((scores, group_ids))
    g, s, y = group_ids[order], scores[order], labels[order]
    n = g.shape[0]
    # Runs of equal (group, score) share a rank; ranks restart at each group's first row.
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)
    n_groups = int(g.max()) + 1
    group_start = np.full(n_groups, n, dtype=np.int64)
    np.minimum.at(group_start, g, np.arange(n))
    ranks = (run_start + run_end + 1) / 2.0
    ranks = ranks[run_id] - group_start[g]
    size = np.bincount(g, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(g, weights=y.astype(np.float64), minlength=n_groups)
    n_neg = size - n_pos
    pos_rank_sum = np.bincount(g, weights=np.where(y, ranks, 0.0), minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    group_auc = (pos_rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (
        n_pos[valid] * n_neg[valid]
    )
    return float(np.average(group_auc, weights=size[valid]))


def logloss(probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood; binary ``(N,)`` probabilities or multiclass ``(N, C)``."""
    p = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape[0] == 0:
        return float("nan")
    if p.ndim == 2:
        picked = p[np.arange(p.shape[0]), labels.astype(np.int64)]
        return float(-np.log(np.clip(picked, _EPS, 1.0)).mean())
    p = np.clip(p, _EPS, 1.0 - _EPS)
    y = labels.astype(np.float64)
    return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean())


def ece(probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, bins: int = 10) -> float:
    """Expected calibration error over equal-mass bins (adaptive ECE, Nixon et al. 2019).

    Rows are sorted by predicted probability and cut into ``bins`` groups of equal size;
    ECE = Σ_b (n_b / N) · |mean(p_b) − mean(y_b)|. Equal-mass bins keep the estimate meaningful
    for rare events (a share rate of 0.1% puts nearly every row in an equal-width first bin).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    n = p.shape[0]
    if n == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    bin_of = (np.arange(n) * min(bins, n)) // n  # position in sorted order -> bin
    gap = np.abs(np.bincount(bin_of, weights=p[order]) - np.bincount(bin_of, weights=y[order]))
    return float(gap.sum() / n)


def accuracy(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Share of correct predictions: argmax for ``(N, C)`` scores, threshold 0.5 for ``(N,)``."""
    p = np.asarray(predictions)
    labels = np.asarray(labels)
    if labels.shape[0] == 0:
        return float("nan")
    predicted = p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5)
    return float((predicted.astype(np.int64) == labels.astype(np.int64)).mean())


def rmse(predictions: np.ndarray, targets: np.ndarray, groups: np.ndarray | None = None) -> float:
    diff = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff))) if diff.size else float("nan")


def mae(predictions: np.ndarray, targets: np.ndarray, groups: np.ndarray | None = None) -> float:
    diff = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.mean(np.abs(diff))) if diff.size else float("nan")


@dataclass(frozen=True)
class Metric:
    """A metric function with what model selection needs to know about it."""

    name: str
    fn: Callable[..., float]
    higher_is_better: bool
    kinds: tuple[str, ...]
    needs_groups: bool = False

    def __call__(self, predictions: np.ndarray, labels: np.ndarray | None, groups: np.ndarray | None = None) -> float:  # labels None: MLM sums
        return self.fn(predictions, labels, groups)


METRICS: Registry[Metric] = Registry("metric")
for _metric in (
    Metric("auc", auc, True, ("binary",)),
    Metric("gauc", gauc, True, ("binary",), needs_groups=True),
    Metric("logloss", logloss, False, ("binary", "multiclass")),
    Metric("accuracy", accuracy, True, ("binary", "multiclass")),
    Metric("ece", ece, False, ("binary",)),
    Metric("rmse", rmse, False, ("regression",)),
    Metric("mae", mae, False, ("regression",)),
    # Ranking quality within each request / user (group_column); labels are gains.
    Metric("ndcg", ndcg_at(None), True, ("binary", "regression"), needs_groups=True),
    *(Metric(f"ndcg@{k}", ndcg_at(k), True, ("binary", "regression"), needs_groups=True) for k in (1, 3, 5, 10, 20)),
):
    METRICS.register(_metric.name)(_metric)
