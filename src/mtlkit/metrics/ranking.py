"""NDCG@k per request or user group (Järvelin & Kekäläinen, TOIS 2002), vectorised and tie-aware.

For each group the items are ranked by score; ``DCG@k = Σ_{i<k} gain_i / log2(i + 2)`` and
``NDCG@k = DCG@k / IDCG@k`` with IDCG from the ideal order (by label). The gain is the label
itself (linear gain): for 0/1 labels this equals the ``2^rel − 1`` form, and for graded labels
such as watch time in seconds it stays finite. Tied scores are ranked in expectation: each
position of a run of equal scores gets the run's mean gain, which is what a random tie-break
gives on average (a constant predictor therefore scores the mean, not the best, order).
Groups without any positive gain have no NDCG and are skipped; the result is the mean over
the remaining groups (each request counts once).

Example:
    >>> import numpy as np
    >>> scores = np.array([0.9, 0.1, 0.5,   0.2, 0.8])
    >>> labels = np.array([1,   0,   0,     1,   0])
    >>> groups = np.array([1,   1,   1,     2,   2])
    >>> round(ndcg(scores, labels, groups), 4)     # group 1 perfect, group 2 positive second
    0.8155
    >>> round(ndcg(scores, labels, groups, k=1), 4)
    0.5
"""

from __future__ import annotations

import numpy as np


def _discounted_gain(keys: np.ndarray, gains: np.ndarray, group_ids: np.ndarray, n_groups: int, k: int | None) -> np.ndarray:
    """Σ gain/log2(rank + 2) per group, items ordered by descending ``keys`` within each group."""
    order = np.lexsort((-keys, group_ids))
    g, s, y = group_ids[order], keys[order], gains[order]
    n = g.shape[0]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = g[1:] != g[:-1]
    group_start = np.flatnonzero(new_group)
    rank = np.arange(n) - np.repeat(group_start, np.diff(np.append(group_start, n)))
    # Runs of equal (group, score): every position in a run gets the run's mean gain.
    new_run = new_group.copy()
    new_run[1:] |= s[1:] != s[:-1]
    run_id = np.cumsum(new_run) - 1
    run_gain = np.bincount(run_id, weights=y) / np.bincount(run_id)
    discount = 1.0 / np.log2(rank + 2.0)
    if k is not None:
        discount[rank >= k] = 0.0
    return np.bincount(g, weights=run_gain[run_id] * discount, minlength=n_groups)


def ndcg(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, k: int | None = None) -> float:
    """Mean NDCG@k over groups that hold at least one positive gain; NaN if none does."""
    if groups is None:
        raise ValueError("ndcg needs a group column (set `group_column` on the task, e.g. the request id)")
    scores = np.asarray(scores, dtype=np.float64)
    gains = np.asarray(labels, dtype=np.float64)
    if scores.shape[0] == 0:
        return float("nan")
    if (gains < 0).any():
        raise ValueError("ndcg needs non-negative labels (gains)")
    _, group_ids = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_ids.max()) + 1
    dcg = _discounted_gain(scores, gains, group_ids, n_groups, k)
    ideal = _discounted_gain(gains, gains, group_ids, n_groups, k)
    valid = ideal > 0
    if not valid.any():
        return float("nan")
    return float(np.mean(dcg[valid] / ideal[valid]))


def ndcg_at(k: int | None):
    """``ndcg`` with a fixed cut-off, in the metric-function signature."""

    def metric(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
        return ndcg(scores, labels, groups, k)

    metric.__name__ = f"ndcg_at_{k}" if k else "ndcg"
    return metric


__all__ = ["ndcg", "ndcg_at"]
