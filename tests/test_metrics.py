from itertools import product

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mtlkit.metrics import accuracy, auc, delta_m, gauc, logloss, mae, mtl_gain, rmse


def brute_force_auc(scores, labels):
    """P(score_pos > score_neg) + 0.5 P(tie), over every positive-negative pair."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_force_gauc(scores, labels, groups):
    total, weight = 0.0, 0.0
    for g in np.unique(groups):
        s, y = scores[groups == g], labels[groups == g]
        if 0 < y.sum() < len(y):
            total += len(y) * brute_force_auc(s, y)
            weight += len(y)
    return total / weight


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 80).astype(float)  # many ties
    labels = rng.integers(0, 2, 80)
    assert auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


@pytest.mark.parametrize("seed", range(5))
def test_gauc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300
    groups = rng.integers(0, 25, n)
    scores = np.round(rng.random(n), 1)  # ties within groups
    labels = (rng.random(n) < 0.3).astype(int)
    labels[groups == 3] = 1  # a single-class group must be skipped
    assert gauc(scores, labels, groups) == pytest.approx(brute_force_gauc(scores, labels, groups), abs=1e-12)


def test_gauc_is_not_plain_auc():
    # Inside each group the ranking is perfect, across groups it is not.
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    labels = np.array([0, 1, 0, 1])
    groups = np.array([0, 0, 1, 1])
    assert gauc(scores, labels, groups) == 1.0
    assert auc(scores, labels) < 1.0


def test_gauc_requires_groups():
    with pytest.raises(ValueError, match="group"):
        gauc(np.array([0.1]), np.array([1]))


def test_logloss_and_regression_metrics():
    rng = np.random.default_rng(0)
    p = rng.random(50)
    y = rng.integers(0, 2, 50)
    assert logloss(p, y) == pytest.approx(log_loss(y, p), rel=1e-9)
    probs = rng.dirichlet(np.ones(3), 40)
    classes = rng.integers(0, 3, 40)
    assert logloss(probs, classes) == pytest.approx(log_loss(classes, probs, labels=[0, 1, 2]), rel=1e-9)
    assert accuracy(probs, classes) == pytest.approx(np.mean(probs.argmax(1) == classes))
    assert rmse(np.array([1.0, 3.0]), np.array([0.0, 0.0])) == pytest.approx(np.sqrt(5))
    assert mae(np.array([1.0, -3.0]), np.array([0.0, 0.0])) == 2.0


def test_mtl_gain_sign_convention():
    assert mtl_gain(0.95, 0.90, higher_is_better=True) > 0
    assert mtl_gain(0.85, 0.90, higher_is_better=True) < 0
    assert mtl_gain(0.10, 0.20, higher_is_better=False) == pytest.approx(0.5)
    assert delta_m({"a": 1.1}, {"a": 1.0}, {"a": True}) == pytest.approx(10.0)
