"""Synthetic short-video feed logs with known ground truth: position bias and sparse, correlated behaviours.

A request is one user opening the feed; ``items_per_request`` (k) videos are shown at positions
0 … k−1. The generative story, per impression of user ``u`` and item ``i`` at position ``p``:

1. **Universe.** Items have a latent factor ``v_i`` (a category centre plus noise, in R^d), a
   quality ``q_i``, an author, a category, a duration (log-normal, median 20 s, 3–300 s) and a
   Zipf popularity ``π_i ∝ rank_i^(−s)`` (popular items are slightly better). Users have a factor
   ``u``, a bias, propensities to like / share / follow, one device (android / ios / tablet,
   55 / 35 / 10 %) and an activity weight (log-normal) that sets how often they open the feed.
2. **Relevance.** Affinity ``a = u·v`` (unit variance). ``true_relevance = σ(b + a + q_i + β_u)``:
   the click probability were the item examined, free of position.
3. **Logging policy.** 2k candidates are drawn by popularity and the top k by a noisy production
   score ``0.5·relevance logit + popularity_boost·z(log π_i) + N(0, 1)`` are shown, best first
   (``z``: standardised). So position is confounded with relevance and, more, with popularity,
   as with a popularity-heavy production ranker: a model that ignores position learns that
   popular items are better than they are. ``popularity_boost=0`` removes that confounder.
4. **Position bias** (examination hypothesis; Richardson et al., WWW 2007; Craswell et al., WSDM
   2008): ``P(click) = exam(p, device) · true_relevance`` with ``exam = (1 + p)^(−η)``,
   η = 0.9 / 0.7 / 0.4 for android / ios / tablet (a bigger screen shows more at once).
5. **After a click**, independently given the features: like ``~ σ(b_l + 0.8a + l_i + λ_u)``,
   share ``~ σ(b_s + 0.8a + s_i + ς_u)`` (``s_i`` correlates with ``l_i``, which correlates with
   ``q_i``), follow ``~ σ(b_f + 0.6a + f_author + φ_u)``, and
   ``watch_time = duration · σ(m + 0.8ε)``, ``m = 0.5 + 0.8a + 0.3q_i − 0.3·log(duration/20)``.
   Without a click, like = share = follow = 0 and watch_time = 0.
6. **Selection bias in the conversion function** (``selection_bias`` s, default 0 = off): the like
   logit gains ``s · max(0, −0.5 − z)`` with ``z`` the standardised position-free click logit, so
   where clicks are rare (z < −0.5: about a third of impressions, far fewer of the clicks)
   conversion *rises* as relevance falls, while in the clicked space it follows the affinity as
   above. A CVR model that learns from clicked rows sees that region through few samples: the
   mechanism entire-space and counterfactual CVR models (ESMM, ESCM², DCMT) target. The like
   intercept is re-solved, so ``like_rate`` holds either way.

**Drifting interests** (``interest_drift`` > 0; off by default, which leaves the log unchanged):
histories are then a walk over categories — each step stays in the previous item's category
with probability ``drift_stay`` (0.6), else jumps to a category drawn from the user's own
preference (Gumbel-max over ``u·centre_c``) — with items drawn by popularity within the step's
category; the category of the last history item is the user's **current interest**, and every
relevance logit gains ``interest_drift · [category_i = current interest]``. A history then
holds several categories, of which only the most recent one matters now: what DIEN's interest
evolution models (Zhou et al., AAAI 2019) and an order-blind pooling (mean, DIN) cannot single out.

The intercepts ``b`` are solved on a pilot sample so that the rates over all impressions are
``click_rate`` (10 %), ``like_rate`` (1 %), ``share_rate`` (0.1 %) and ``follow_rate`` (0.2 %).

Columns: ``request_id`` (increases with time: GAUC / NDCG group, and a temporal split key),
``position`` (the bias feature for a shallow tower — keep it out of the main features, which
:func:`shortvideo_schema` does), ``user_id``, ``device``, ``item_id``, ``author_id``,
``category``, ``duration`` (s), ``item_popularity`` (π_i relative to uniform),
``user_activity`` (relative), ``hist_items`` (``list<string>`` of up to ``history_length`` item
ids the user clicked before the log starts, oldest first, drawn from the user's own
preferences — a re-watched item may appear twice — and fixed through the log, so chunking
cannot change it; ids are ``item_id`` strings, so one embedding table serves both), labels ``click``, ``like``, ``share``, ``follow`` (int8) and
``watch_time`` (s), and ground truth: ``true_relevance``, ``true_examination`` (``P(click) =
true_examination · true_relevance``), ``true_like_prob``, ``true_share_prob``,
``true_follow_prob`` (each ``P(behaviour | click)``, defined on every row — the counterfactual
on unclicked rows, for entire-space CVR checks) and ``true_watch_time`` (≈ E[watch | click],
logistic-normal mean by the probit approximation).

Rows come in blocks of :data:`BLOCK_REQUESTS` requests, each drawn from its own seeded stream,
so a Parquet file written in chunks of any size (rounded down to whole blocks) equals the
in-memory table of the same seed. 2M rows take about 5 s on one CPU core.

Example:
    >>> table = shortvideo_table(20_000, seed=0)
    >>> table.num_rows, table["position"][:3].to_pylist(), table.schema.field("hist_items").type
    (20000, [0, 1, 2], ListType(list<item: string>))
    >>> import pyarrow.compute as pc
    >>> bool(pc.all(pc.equal(pc.multiply(table["like"], table["click"]), table["like"])).as_py())  # like ⇒ click
    True
    >>> [t.name for t in shortvideo_tasks()]
    ['click', 'like', 'share', 'watch_time']
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, create_model

from mtlkit.data.datasets import DatasetSplits
from mtlkit.data.datasets.registry import DATASETS, BuiltinDataset, DatasetOptions
from mtlkit.data.readers import read_table
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec, SequenceFeature
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import Task, TaskKind, TaskMask

BLOCK_REQUESTS = 1024
PILOT_REQUESTS = 8192
MAX_IN_MEMORY_ROWS = 20_000_000
DEVICES = ("android", "ios", "tablet")
DEVICE_SHARE = (0.55, 0.35, 0.10)
DEVICE_ETA = np.array([0.9, 0.7, 0.4])  # examination decay per device
WATCH_NOISE = 0.8
TASKS = ("click", "like", "share", "follow", "watch_time")
DEFAULT_TASKS = ("click", "like", "share", "watch_time")


@dataclass(frozen=True)
class ShortVideoSpec:
    """Generator options; sizes default to a universe that grows with the number of rows."""

    items_per_request: int = 10
    n_users: int | None = None
    n_items: int | None = None
    n_categories: int = 20
    factor_dim: int = 16
    zipf_exponent: float = 0.8
    history_length: int = 20
    click_rate: float = 0.10
    like_rate: float = 0.01
    share_rate: float = 0.001
    follow_rate: float = 0.002
    popularity_boost: float = 1.0
    selection_bias: float = 0.0
    interest_drift: float = 0.0  # > 0: category-walk histories; the last category adds this to the relevance logit
    drift_stay: float = 0.6  # the walk's probability of staying in the previous category

    def __post_init__(self) -> None:
        positive = {"items_per_request": self.items_per_request, "n_categories": self.n_categories,
                    "factor_dim": self.factor_dim, "history_length": self.history_length}
        for name, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"shortvideo {name} must be at least 1, got {value}")
        for name in ("n_users", "n_items"):
            value = getattr(self, name)
            if value is not None and int(value) < 2:
                raise ConfigError(f"shortvideo {name} must be at least 2, got {value}")
        if self.selection_bias < 0:
            raise ConfigError(f"shortvideo selection_bias must be ≥ 0, got {self.selection_bias}")
        if self.interest_drift < 0 or not 0 <= self.drift_stay <= 1:
            raise ConfigError(f"shortvideo interest_drift must be ≥ 0 and drift_stay in [0, 1], got {self.interest_drift}, {self.drift_stay}")
        if self.zipf_exponent < 0:
            raise ConfigError(f"shortvideo zipf_exponent must be ≥ 0, got {self.zipf_exponent}")
        if not 0 < self.click_rate < 1:
            raise ConfigError(f"shortvideo click_rate must lie in (0, 1), got {self.click_rate}")
        for name in ("like_rate", "share_rate", "follow_rate"):
            value = getattr(self, name)
            if not 0 < value < self.click_rate:
                raise ConfigError(f"shortvideo {name} must lie in (0, click_rate={self.click_rate}): it needs a click, got {value}")

    def sizes(self, rows: int) -> tuple[int, int]:
        """(users, items): by default ~200 impressions per user and per item (at least 1,000 / 2,000)."""
        users = self.n_users or int(np.clip(rows // 200, 1_000, 1_000_000))
        items = self.n_items or int(np.clip(rows // 200, 2_000, 1_000_000))
        return int(users), int(items)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw(cdf: np.ndarray, rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    # Inverse-CDF sampling: one searchsorted instead of rng.choice's per-call normalisation.
    return np.minimum(np.searchsorted(cdf, rng.random(shape), side="right"), len(cdf) - 1)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


@dataclass
class _Universe:
    spec: ShortVideoSpec
    item_factor: np.ndarray
    quality: np.ndarray
    like_quality: np.ndarray
    share_quality: np.ndarray
    author: np.ndarray
    author_appeal: np.ndarray
    category: np.ndarray
    duration: np.ndarray
    popularity: np.ndarray
    log_popularity: np.ndarray  # standardised
    item_cdf: np.ndarray
    user_factor: np.ndarray
    user_bias: np.ndarray
    like_propensity: np.ndarray
    share_propensity: np.ndarray
    follow_propensity: np.ndarray
    device: np.ndarray
    activity: np.ndarray  # relative to the mean user
    user_cdf: np.ndarray
    history: np.ndarray  # (users, history_length) item indices, -1 = none
    history_length: np.ndarray
    intercepts: dict[str, float]
    current_category: np.ndarray | None = None  # interest_drift > 0: the last history item's category (-1: none)


def _build_universe(spec: ShortVideoSpec, rows: int, seed: int) -> _Universe:
    rng = np.random.default_rng([seed, 0])
    n_users, n_items = spec.sizes(rows)
    d = spec.factor_dim
    scale = d ** -0.25  # factor entries with variance 1/√d: u·v has unit variance
    centres = rng.normal(0, scale, (spec.n_categories, d))
    category = rng.integers(0, spec.n_categories, n_items)
    item_factor = np.sqrt(0.6) * centres[category] + np.sqrt(0.4) * rng.normal(0, scale, (n_items, d))
    rank = rng.permutation(n_items)
    popularity = (rank + 1.0) ** -spec.zipf_exponent
    popularity /= popularity.sum()
    log_popularity = _standardise(np.log(popularity))
    quality = rng.normal(0, 0.5, n_items) + 0.25 * log_popularity
    like_quality = 0.5 * quality + rng.normal(0, 0.5, n_items)
    share_quality = 0.5 * like_quality + rng.normal(0, 0.5, n_items)
    n_authors = max(20, n_items // 5)
    author = rng.integers(0, n_authors, n_items)
    author_appeal = rng.normal(0, 0.7, n_authors)
    duration = np.clip(np.exp(rng.normal(np.log(20.0), 0.7, n_items)), 3.0, 300.0)
    user_factor = rng.normal(0, scale, (n_users, d))
    user_bias = rng.normal(0, 0.5, n_users)
    like_propensity = rng.normal(0, 0.6, n_users)
    share_propensity = 0.5 * like_propensity + rng.normal(0, 0.6, n_users)
    follow_propensity = rng.normal(0, 0.6, n_users)
    device = rng.choice(len(DEVICES), size=n_users, p=DEVICE_SHARE)
    activity = rng.lognormal(0.0, 1.0, n_users)
    activity /= activity.mean()
    item_cdf = np.cumsum(popularity)
    user_cdf = np.cumsum(activity) / activity.sum()
    current = None
    if spec.interest_drift > 0:
        history, lengths, current = _drifting_histories(rng, spec, centres, category, popularity, user_factor, activity)
    else:
        history, lengths = _histories(rng, spec, item_factor, quality, item_cdf, user_factor, user_bias, activity)
    return _Universe(spec, item_factor, quality, like_quality, share_quality, author, author_appeal, category,
                     duration, popularity, log_popularity, item_cdf, user_factor, user_bias, like_propensity,
                     share_propensity, follow_propensity, device, activity, user_cdf, history, lengths, {}, current)


def _drifting_histories(rng, spec, centres, category, popularity, user_factor, activity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Category-walk histories (module docstring), left-aligned, oldest first; and each user's current category."""
    n_users, length = len(user_factor), spec.history_length
    lengths = np.minimum(rng.poisson(0.6 * length * np.minimum(activity, 3.0)), length)
    preference = user_factor @ centres.T * np.sqrt(spec.factor_dim) * 0.3  # (users, categories): tastes, yet room to wander
    walk = np.empty((n_users, length), dtype=np.int64)
    walk[:, 0] = np.argmax(preference + rng.gumbel(size=preference.shape), axis=1)
    for t in range(1, length):
        jump = np.argmax(preference + rng.gumbel(size=preference.shape), axis=1)
        walk[:, t] = np.where(rng.random(n_users) < spec.drift_stay, walk[:, t - 1], jump)
    history = np.full((n_users, length), -1, dtype=np.int32)
    for c in range(spec.n_categories):
        members = np.flatnonzero(category == c)
        at = walk == c
        if len(members) == 0 or not at.any():
            continue
        cdf = np.cumsum(popularity[members]) / popularity[members].sum()
        history[at] = members[_draw(cdf, rng, int(at.sum()))]
    valid = np.arange(length)[None, :] < lengths[:, None]
    history = np.where(valid, history, -1)
    last = walk[np.arange(n_users), np.maximum(lengths - 1, 0)]
    current = np.where(lengths > 0, last, -1)
    return history, lengths, current


def _histories(rng, spec, item_factor, quality, item_cdf, user_factor, user_bias, activity) -> tuple[np.ndarray, np.ndarray]:
    """Pre-log click histories: each user's top items among 4L popularity draws (Gumbel-perturbed)."""
    n_users, length = len(user_factor), spec.history_length
    lengths = np.minimum(rng.poisson(0.6 * length * np.minimum(activity, 3.0)), length)
    history = np.full((n_users, length), -1, dtype=np.int32)
    for start in range(0, n_users, 10_000):  # bounded memory (~100 MB of gathered factors) for millions of users
        stop = min(start + 10_000, n_users)
        candidates = _draw(item_cdf, rng, (stop - start, 4 * length))
        affinity = np.einsum("ud,ucd->uc", user_factor[start:stop], item_factor[candidates])
        score = affinity + quality[candidates] + user_bias[start:stop, None] + rng.gumbel(size=candidates.shape)
        best = np.argsort(-score, axis=1, kind="stable")[:, :length]
        chosen = np.take_along_axis(candidates, best, axis=1)[:, ::-1]  # best last = most recent
        keep = np.arange(length)[None, :] >= length - lengths[start:stop, None]
        # Left-align the kept items, oldest first.
        order = np.argsort(~keep, axis=1, kind="stable")
        history[start:stop] = np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(chosen, order, axis=1), -1)
    return history, lengths


def _impressions(u: _Universe, rng: np.random.Generator, n_requests: int) -> dict[str, np.ndarray]:
    """Users, shown items and positions of ``n_requests`` requests, with the position-free logits."""
    k = u.spec.items_per_request
    users = _draw(u.user_cdf, rng, n_requests)
    candidates = _draw(u.item_cdf, rng, (n_requests, 2 * k))
    affinity = np.einsum("rd,rcd->rc", u.user_factor[users], u.item_factor[candidates])
    logit = affinity + u.quality[candidates] + u.user_bias[users, None]
    if u.current_category is not None:  # drifting interests: the most recent category is what the user wants now
        logit = logit + u.spec.interest_drift * (u.category[candidates] == u.current_category[users, None])
    score = 0.5 * logit + u.spec.popularity_boost * u.log_popularity[candidates] + rng.normal(size=candidates.shape)
    # A feed shows an item once: later copies of a candidate drop to the bottom.
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, axis=1)
    repeat = np.zeros(candidates.shape, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    score[repeat] = -np.inf
    shown = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return {
        "user": np.repeat(users, k),
        "item": np.take_along_axis(candidates, shown, axis=1).ravel(),
        "position": np.tile(np.arange(k), n_requests),
        "affinity": np.take_along_axis(affinity, shown, axis=1).ravel(),
        "logit": np.take_along_axis(logit, shown, axis=1).ravel(),
    }


def _behaviour_logits(u: _Universe, imp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Intercept-free logits of P(click | examined) and of each behaviour given a click."""
    a, item, user = imp["affinity"], imp["item"], imp["user"]
    return {
        "click": imp["logit"],
        "like": 0.8 * a + u.like_quality[item] + u.like_propensity[user] + _outside_click_space(u, imp),
        "share": 0.8 * a + u.share_quality[item] + u.share_propensity[user],
        "follow": 0.6 * a + u.author_appeal[u.author[item]] + u.follow_propensity[user],
    }


def _outside_click_space(u: _Universe, imp: dict[str, np.ndarray]) -> np.ndarray | float:
    """``s · max(0, −0.5 − z)``, z the click logit standardised on the pilot sample (step 6)."""
    s = u.spec.selection_bias
    if s == 0:
        return 0.0
    z = (imp["logit"] - u.intercepts["logit_mean"]) / u.intercepts["logit_std"]
    return s * np.maximum(0.0, -0.5 - z)


def _examination(u: _Universe, imp: dict[str, np.ndarray]) -> np.ndarray:
    return (1.0 + imp["position"]) ** -DEVICE_ETA[u.device[imp["user"]]]


def _solve(rate, target: float, name: str) -> float:
    """The intercept b with rate(b) = target, by bisection (rate increases with b)."""
    lo, hi = -30.0, 30.0
    if not rate(lo) < target < rate(hi):
        raise ConfigError(f"shortvideo {name} {target} cannot be reached (possible range {rate(lo):.4g} to {rate(hi):.4g} with this position bias)")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rate(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _calibrate(u: _Universe, seed: int) -> None:
    """Solve the intercepts on a pilot sample so that each behaviour's rate over impressions is on target."""
    imp = _impressions(u, np.random.default_rng([seed, 1]), PILOT_REQUESTS)
    u.intercepts["logit_mean"], u.intercepts["logit_std"] = float(imp["logit"].mean()), float(imp["logit"].std())
    logits, exam = _behaviour_logits(u, imp), _examination(u, imp)
    spec = u.spec
    b_click = _solve(lambda b: float(np.mean(exam * _sigmoid(logits["click"] + b))), spec.click_rate, "click_rate")
    p_click = exam * _sigmoid(logits["click"] + b_click)
    u.intercepts["click"] = b_click
    for name in ("like", "share", "follow"):
        target = getattr(spec, f"{name}_rate")
        u.intercepts[name] = _solve(lambda b, z=logits[name]: float(np.mean(p_click * _sigmoid(z + b))), target, f"{name}_rate")


def _block(u: _Universe, seed: int, block: int) -> dict[str, np.ndarray]:
    """All columns (as numpy) of one block of requests, drawn from the block's own stream."""
    rng = np.random.default_rng([seed, 2, block])
    imp = _impressions(u, rng, BLOCK_REQUESTS)
    logits, exam = _behaviour_logits(u, imp), _examination(u, imp)
    n = len(imp["item"])
    relevance = _sigmoid(logits["click"] + u.intercepts["click"])
    click = rng.random(n) < exam * relevance
    probs = {name: _sigmoid(logits[name] + u.intercepts[name]) for name in ("like", "share", "follow")}
    acts = {name: click & (rng.random(n) < p) for name, p in probs.items()}
    duration = u.duration[imp["item"]]
    mean_watch = 0.5 + 0.8 * imp["affinity"] + 0.3 * u.quality[imp["item"]] - 0.3 * np.log(duration / 20.0)
    watch = np.where(click, duration * _sigmoid(mean_watch + WATCH_NOISE * rng.normal(size=n)), 0.0)
    return {
        "request_id": np.repeat(block * BLOCK_REQUESTS + np.arange(BLOCK_REQUESTS, dtype=np.int64), u.spec.items_per_request),
        "position": imp["position"].astype(np.int16),
        "user": imp["user"],
        "item": imp["item"],
        "click": click.astype(np.int8),
        **{name: a.astype(np.int8) for name, a in acts.items()},
        "watch_time": watch.astype(np.float32),
        "true_relevance": relevance.astype(np.float32),
        "true_examination": exam.astype(np.float32),
        **{f"true_{name}_prob": p.astype(np.float32) for name, p in probs.items()},
        # Probit approximation of E[σ(m + sε)] = σ(m / √(1 + πs²/8)).
        "true_watch_time": (duration * _sigmoid(mean_watch / np.sqrt(1 + np.pi * WATCH_NOISE**2 / 8))).astype(np.float32),
    }


def _names(prefix: str, count: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(count)), pa.string()), "")


class _Generator:
    """Turns blocks into Arrow tables; the id strings are built once per universe."""

    def __init__(self, rows: int, seed: int, spec: ShortVideoSpec):
        self.rows, self.seed, self.spec = rows, seed, spec
        self.universe = _build_universe(spec, rows, seed)
        _calibrate(self.universe, seed)
        u = self.universe
        self.user_names, self.item_names = _names("u", len(u.user_factor)), _names("i", len(u.item_factor))
        self.author_names, self.category_names = _names("a", len(u.author_appeal)), _names("c", spec.n_categories)
        self.device_names = pa.array(DEVICES)
        self.block_rows = BLOCK_REQUESTS * spec.items_per_request
        self.n_blocks = -(-rows // self.block_rows)

    def table(self, first_block: int, last_block: int) -> pa.Table:
        """Blocks ``[first_block, last_block)`` as one table, cut at ``rows``."""
        parts = [_block(self.universe, self.seed, b) for b in range(first_block, last_block)]
        cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        keep = min(len(cols["item"]), self.rows - first_block * self.block_rows)
        cols = {key: value[:keep] for key, value in cols.items()}
        u, user, item = self.universe, cols.pop("user"), cols.pop("item")
        lengths = u.history_length[user]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        flat = u.history[user][np.arange(u.history.shape[1])[None, :] < lengths[:, None]]
        history = pa.ListArray.from_arrays(pa.array(offsets), self.item_names.take(pa.array(flat)))
        columns = {
            "request_id": cols.pop("request_id"),
            "position": cols.pop("position"),
            "user_id": self.user_names.take(pa.array(user)),
            "device": self.device_names.take(pa.array(u.device[user])),
            "item_id": self.item_names.take(pa.array(item)),
            "author_id": self.author_names.take(pa.array(u.author[item])),
            "category": self.category_names.take(pa.array(u.category[item])),
            "duration": u.duration[item].astype(np.float32),
            "item_popularity": (u.popularity[item] * len(u.popularity)).astype(np.float32),
            "user_activity": u.activity[user].astype(np.float32),
            "hist_items": history,
            **cols,
        }
        return pa.table(columns)

    def chunks(self, chunk_rows: int) -> Iterator[pa.Table]:
        step = max(1, chunk_rows // self.block_rows)
        for first in range(0, self.n_blocks, step):
            yield self.table(first, min(first + step, self.n_blocks))


def _spec(options: dict) -> ShortVideoSpec:
    known = {f.name for f in fields(ShortVideoSpec)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"shortvideo has no option {unknown[0]!r} (options: {', '.join(sorted(known))})")
    return ShortVideoSpec(**options)


def _check_rows(rows: int) -> int:
    if int(rows) < 1:
        raise ConfigError(f"shortvideo rows must be at least 1, got {rows}")
    return int(rows)


def shortvideo_table(rows: int = 100_000, seed: int = 0, **options) -> pa.Table:
    """The whole log in memory (for tests and small experiments); options as :class:`ShortVideoSpec`."""
    generator = _Generator(_check_rows(rows), seed, _spec(options))
    return generator.table(0, generator.n_blocks)


def generate_shortvideo(path: str | Path, rows: int, seed: int = 0, chunk_rows: int = 1_000_000,
                        progress: bool = False, **options) -> Path:
    """Stream the log to a Parquet file, ``chunk_rows`` at a time (one row group each), bounded memory.

    Written under a temporary name and renamed at the end, so an interrupted run never leaves a
    file that looks complete. The file equals :func:`shortvideo_table` with the same arguments.
    """
    path = Path(path)
    generator = _Generator(_check_rows(rows), seed, _spec(options))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        task = bar.add_task(f"shortvideo → {path.name}", total=generator.rows)
        bar.start()
    writer: pq.ParquetWriter | None = None
    try:
        for chunk in generator.chunks(chunk_rows):
            if writer is None:
                writer = pq.ParquetWriter(partial, chunk.schema, compression="zstd")
            writer.write_table(chunk, row_group_size=chunk.num_rows)
            if bar is not None:
                bar.advance(task, chunk.num_rows)
        assert writer is not None
        writer.close()
        writer = None
        os.replace(partial, path)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
        if bar is not None:
            bar.stop()
    return path


def shortvideo_tasks(names: Sequence[str] = DEFAULT_TASKS, group_column: str | None = "request_id") -> list[Task]:
    """Binary tasks over all impressions (AUC, GAUC per request, logloss); watch time in seconds,
    learned as log1p and only on clicked rows."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"shortvideo has no task {unknown[0]!r} (tasks: {', '.join(TASKS)})")
    metrics = ["auc", "gauc", "logloss"] if group_column else None
    tasks = []
    for name in names:
        if name == "watch_time":
            tasks.append(Task(name=name, kind=TaskKind.REGRESSION, label_transform="log1p", mask=TaskMask(column="click")))
        else:
            tasks.append(Task(name=name, kind=TaskKind.BINARY, metrics=metrics, group_column=group_column))
    return tasks


def shortvideo_schema(history: bool = True, max_history: int = 20, hash_buckets: int | None = None,
                      bias: Sequence[str] = ("position", "device")) -> SchemaSpec:
    """Main features, without ``position``; ``position`` and ``device`` are ``bias`` features.

    Bias features feed only a shallow tower (``model.shallow_tower``; unused without one) and are
    missing at serving. ``hash_buckets`` hashes the id columns instead of keeping vocabularies
    (for 10⁷+ rows); ``history`` adds ``hist_items``, mean-pooled, sharing ``item_id``'s
    vocabulary and embedding table.
    """
    ids = ["user_id", "item_id", "author_id"]
    categorical = [CategoricalFeature(name=c, hash_buckets=hash_buckets if c in ids else None) for c in [*ids, "category", "device"]]
    numeric = [NumericFeature(name="duration", transform="log1p"), NumericFeature(name="item_popularity", transform="log1p"),
               NumericFeature(name="user_activity", transform="log1p")]
    sequences = [SequenceFeature(name="hist_items", max_len=max_history, share_vocabulary_with="item_id")] if history else []
    return SchemaSpec(categorical=categorical, numeric=numeric, sequences=sequences, bias=[CategoricalFeature(name=b) for b in bias])


def split_by_request(table: pa.Table, validation: float = 0.1, test: float = 0.1) -> dict[str, pa.Table]:
    """Temporal split on ``request_id`` (which grows with time): first requests train, last test.

    Whole requests stay together, so per-request GAUC / NDCG see complete feeds.
    """
    if validation <= 0 or test < 0 or validation + test >= 1:
        raise ConfigError(f"shortvideo validation/test fractions must be positive and sum below 1, got {validation}/{test}")
    ids = table.column("request_id").to_numpy()
    first, end = int(ids.min()), int(ids.max()) + 1
    cut_train = first + int((end - first) * (1 - validation - test))
    cut_validation = first + int((end - first) * (1 - test))
    parts = {"train": ids < cut_train, "validation": (ids >= cut_train) & (ids < cut_validation), "test": ids >= cut_validation}
    return {name: table.filter(pa.array(mask)) for name, mask in parts.items()}


def load_shortvideo(root: str | Path | None = None, rows: int = 100_000, seed: int = 0, validation: float = 0.1,
                    test: float = 0.1, **options) -> DatasetSplits:
    """Splits, tasks and schema of a log read from ``root`` (a Parquet file from
    :func:`generate_shortvideo`) or generated in memory (``rows`` ≤ :data:`MAX_IN_MEMORY_ROWS`)."""
    if root is not None:
        if options:
            raise ConfigError(f"shortvideo option {sorted(options)[0]!r} does not apply to a log read from root {root}")
        table = read_table(root)
        missing = [c for c in ("request_id", *DEFAULT_TASKS) if c not in table.column_names]
        if missing:
            raise DataError(f"{root}: missing column {missing[0]!r} (not a shortvideo log?)")
    else:
        if int(rows) > MAX_IN_MEMORY_ROWS:
            raise ConfigError(f"shortvideo rows={rows} is too many to generate in memory (at most {MAX_IN_MEMORY_ROWS:,}): "
                              f"write them with generate_shortvideo(path, rows) and pass root=path")
        table = shortvideo_table(rows, seed, **options)
    parts = split_by_request(table, validation, test)
    return DatasetSplits(parts["train"], parts["validation"], parts["test"], shortvideo_tasks(), shortvideo_schema())


# The loader's own keys, then the generator's (ShortVideoSpec's fields, with their defaults).
_GENERATOR_FIELDS: dict[str, Any] = {f.name: (get_type_hints(ShortVideoSpec)[f.name], f.default) for f in fields(ShortVideoSpec)}
ShortVideoOptions = create_model(
    "ShortVideoOptions", __base__=DatasetOptions,
    root=(Path | None, None), rows=(int, 100_000), seed=(int, Field(default=0, ge=0)),
    validation=(float, Field(default=0.1, ge=0, lt=1)), test=(float, Field(default=0.1, ge=0, lt=1)),
    **_GENERATOR_FIELDS,
)


def _load(options: DatasetOptions) -> DatasetSplits:
    given = options.model_dump(exclude_unset=True)  # generator keys only where set: a read log takes none
    return load_shortvideo(**given)


DATASETS.register("shortvideo")(BuiltinDataset(ShortVideoOptions, _load))
