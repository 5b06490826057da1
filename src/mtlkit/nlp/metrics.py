"""NLP metrics, registered in :data:`mtlkit.metrics.METRICS` (with their direction) on import.

Model selection reads ``higher_is_better``, so every metric a task kind reports is registered
here or in :mod:`mtlkit.metrics.functions`. All take host arrays ``(predictions, labels)``:

- ``f1``: binary F1 of the positive class (GLUE MRPC/QQP); ``f1_macro``: unweighted mean over
  classes. Predictions are ``(N, C)`` scores (argmax; positive class 1) or ``(N,)`` scores
  thresholded at 0.5.
- ``mcc``: Matthews correlation (GLUE CoLA), multiclass form of Gorodkin (2004), −1…1.
- ``pearson``, ``spearman``: correlations of a regression's predictions (GLUE STS-B).
- ``accuracy@1``, ``mrr``: ranking over candidates, ``(N, k)`` scores and the index of the
  relevant candidate; MRR = mean of 1 / rank of the relevant one (ties count against it).
- ``perplexity``: ``exp`` of the mean token NLL; here ``predictions`` is ``(N, 2)`` per-row
  ``[nll_sum, tokens]`` (labels unused), which is what masked-LM evaluation keeps.

Example:
    >>> import numpy as np
    >>> f1(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 1, 0]))
    0.5
    >>> round(mcc(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])), 4)
    0.5774
    >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0]))
    0.5
    >>> mrr(np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.1]]), np.array([2, 0]))
    0.75
    >>> METRICS.get("perplexity").higher_is_better
    False
"""

from __future__ import annotations

import numpy as np

from mtlkit.metrics.functions import METRICS, Metric, average_ranks


def _classes(predictions: np.ndarray) -> np.ndarray:
    p = np.asarray(predictions)
    return p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5).astype(np.int64)


def f1(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    predicted, truth = _classes(predictions) == 1, np.asarray(labels).astype(np.int64) == 1
    if truth.shape[0] == 0:
        return float("nan")
    tp = float((predicted & truth).sum())
    denominator = float(predicted.sum() + truth.sum())
    return 2.0 * tp / denominator if denominator else 0.0


def f1_macro(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    predicted, truth = _classes(predictions), np.asarray(labels).astype(np.int64)
    if truth.shape[0] == 0:
        return float("nan")
    scores = []
    for c in np.union1d(predicted, truth):
        tp = float(((predicted == c) & (truth == c)).sum())
        scores.append(2.0 * tp / float((predicted == c).sum() + (truth == c).sum()))
    return float(np.mean(scores))


def mcc(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    predicted, truth = _classes(predictions), np.asarray(labels).astype(np.int64)
    n = truth.shape[0]
    if n == 0:
        return float("nan")
    k = int(max(predicted.max(), truth.max())) + 1
    confusion = np.zeros((k, k))
    np.add.at(confusion, (truth, predicted), 1.0)
    t, p, c = confusion.sum(1), confusion.sum(0), np.trace(confusion)
    denominator = np.sqrt((n * n - (p * p).sum()) * (n * n - (t * t).sum()))
    return float((c * n - (t * p).sum()) / denominator) if denominator else 0.0


def pearson(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if x.shape[0] < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator else 0.0  # a constant prediction carries no signal


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.shape[0])
    ranks[order] = average_ranks(values[order])
    return ranks


def spearman(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return pearson(_ranks(x), _ranks(y)) if x.shape[0] >= 2 else float("nan")


def _relevant_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    relevant = s[np.arange(s.shape[0]), np.asarray(labels).astype(np.int64)]
    return (s >= relevant[:, None]).sum(1)  # candidates scoring at least as high, itself included


def accuracy_at_1(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    return float((_relevant_rank(scores, labels) == 1).mean()) if len(labels) else float("nan")


def mrr(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    return float((1.0 / _relevant_rank(scores, labels)).mean()) if len(labels) else float("nan")


def perplexity(predictions: np.ndarray, labels: np.ndarray | None = None, groups: np.ndarray | None = None) -> float:
    sums = np.asarray(predictions, dtype=np.float64).reshape(-1, 2).sum(0)
    return float(np.exp(sums[0] / sums[1])) if sums[1] > 0 else float("nan")


for _metric in (
    Metric("f1", f1, True, ("classification",)),
    Metric("f1_macro", f1_macro, True, ("classification",)),
    Metric("mcc", mcc, True, ("classification",)),
    Metric("pearson", pearson, True, ("regression",)),
    Metric("spearman", spearman, True, ("regression",)),
    Metric("accuracy@1", accuracy_at_1, True, ("ranking",)),
    Metric("mrr", mrr, True, ("ranking",)),
    Metric("perplexity", perplexity, False, ("mlm",)),
):
    if _metric.name not in METRICS:  # idempotent: a second import (e.g. doctest collection) is harmless
        METRICS.register(_metric.name)(_metric)

__all__ = ["accuracy_at_1", "f1", "f1_macro", "mcc", "mrr", "pearson", "perplexity", "spearman"]
