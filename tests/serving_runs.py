"""Tiny trained runs for the export and serving tests: one table generator, a few model configs.

``ranking_table`` has every kind of input serving must handle: string and integer categoricals,
a numeric column with missing values, a delimited history sharing the item vocabulary (DIN), a
list-of-strings column with its own vocabulary, a position bias feature, and binary, multiclass
and regression labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtlkit.config import RunConfig
from mtlkit.run import train_run

TAGS = ["news", "sport", "music", "film", "food", "tech"]


def ranking_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 20, n)
    item = rng.integers(0, 30, n)
    price = rng.lognormal(3, 1, n)
    score = np.linspace(-2, 2, 20)[user] + np.sin(item) - 0.3 * np.log1p(price)
    click = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(np.int64)
    buy = ((rng.random(n) < 1 / (1 + np.exp(-(score - 1)))) & (click == 1)).astype(np.int64)
    hist = ["|".join(str(i) for i in rng.integers(0, 30, rng.integers(0, 7))) for _ in range(n)]
    tags = [[TAGS[t] for t in rng.integers(0, len(TAGS), rng.integers(0, 4))] for _ in range(n)]
    price_column = pa.array(price, mask=rng.random(n) < 0.1)  # some missing: a missing-value flag column
    return pa.table({
        "user": [f"u{u}" for u in user], "item": item, "price": price_column, "hist": hist,
        "tags": pa.array(tags, pa.list_(pa.string())), "pos": rng.integers(1, 6, n),
        "click": click, "buy": buy, "topic": item % 3, "watch": np.round(rng.exponential(20, n) * (1 + click), 2),
    })


def _config(data: Path, name: str) -> dict:
    features: dict = {"categorical": ["user", "item"], "numeric": [{"name": "price", "transform": "log1p"}]}
    train = {"epochs": 1, "batch_size": 128, "lr": 0.01, "progress": False}
    files = {"train": str(data / "train.parquet"), "validation": str(data / "valid.parquet")}
    if name == "shared_bottom":  # odds read-out, multiclass, plain regression
        tasks = [{"name": "click", "kind": "binary", "output": "odds"}, {"name": "topic", "kind": "multiclass", "n_classes": 3},
                 {"name": "watch", "kind": "regression"}]
        model = {"backbone": "shared_bottom", "options": {"hidden": [16]}, "embedding_dim": 4, "tower": [8]}
    elif name == "mmoe_sequence":  # sequences (DIN + mean), calibration, shallow tower, product fusion
        features["sequences"] = [
            {"name": "hist", "max_len": 5, "separator": "|", "pooling": "din", "target": "item", "share_vocabulary_with": "item"},
            {"name": "tags", "max_len": 3, "pooling": "mean"},
        ]
        features["bias"] = ["pos"]
        tasks = [{"name": "click", "kind": "binary", "negative_sampling_rate": 0.5},
                 {"name": "buy", "kind": "binary", "mask": {"column": "click", "equals": 1}},
                 {"name": "topic", "kind": "multiclass", "n_classes": 3},
                 {"name": "watch", "kind": "regression", "label_transform": "log1p"}]
        model = {"backbone": "mmoe", "options": {"experts": 3, "expert_hidden": [16]}, "embedding_dim": 4, "tower": [8],
                 "shallow_tower": {"tasks": ["click"], "hidden": [4], "serving": "missing"},
                 "fusion": {"kind": "product", "weights": {"click": 1.0, "watch": 0.5}, "offsets": {"watch": 1.0}}}
    elif name == "single_task":  # k independent models, a weighted-sum fused score
        tasks = [{"name": "click", "kind": "binary"}, {"name": "watch", "kind": "regression", "label_transform": "log1p"}]
        model = {"backbone": "single_task", "options": {"hidden": [8]}, "embedding_dim": 4,
                 "fusion": {"kind": "weighted_sum", "weights": {"click": 1.0, "watch": 0.01}}}
    elif name == "counterfactual":  # ESCM²-DR (an imputation tower that serving never runs), JRC, ZILN
        tasks = [{"name": "click", "kind": "binary"}, {"name": "buy", "kind": "binary", "mask": {"column": "click", "equals": 1}},
                 {"name": "ctcvr", "kind": "binary", "label": "buy"},
                 {"name": "rank", "kind": "binary", "label": "click", "loss": "jrc", "group_column": "user"},
                 {"name": "watch", "kind": "regression", "loss": "ziln"}]
        model = {"backbone": "mmoe", "options": {"experts": 2, "expert_hidden": [8]}, "embedding_dim": 4, "tower": [8],
                 "relations": {"escm2": {"ctr": "click", "cvr": "buy", "ctcvr": "ctcvr", "estimator": "dr"}}}
    elif name == "plain_numeric":  # a standardised numeric feature (no log1p): 1e308 overflows its scaling
        features["numeric"] = [{"name": "price"}]
        tasks = [{"name": "click", "kind": "binary"}, {"name": "topic", "kind": "multiclass", "n_classes": 3}]
        model = {"backbone": "shared_bottom", "options": {"hidden": [8]}, "embedding_dim": 4}
    else:
        raise ValueError(name)
    return {"seed": 0, "data": files, "features": features, "tasks": tasks, "model": model, "train": train}


def write_data(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, seed, n in (("train.parquet", 0, 600), ("valid.parquet", 1, 200), ("holdout.parquet", 2, 200)):
        pq.write_table(ranking_table(n, seed), directory / name)
    return directory


def train_tiny_run(directory: Path, name: str) -> Path:
    """Train config ``name`` for one epoch on the data in ``directory``; return the run directory."""
    run_dir = directory / f"run_{name}"
    train_run(RunConfig.model_validate(_config(directory, name)), run_dir, progress=False)
    return run_dir


_SHARED: dict[str, Path] = {}


def shared_run(tmp_path_factory, name: str) -> tuple[Path, Path]:
    """(data directory, run directory) of config ``name``, trained once per test session."""
    if "data" not in _SHARED:
        _SHARED["data"] = write_data(tmp_path_factory.mktemp("serving-runs"))
    if name not in _SHARED:
        _SHARED[name] = train_tiny_run(_SHARED["data"], name)
    return _SHARED["data"], _SHARED[name]


def holdout(directory: Path) -> pa.Table:
    """Serving rows: features only (no labels, no position)."""
    return pq.read_table(directory / "holdout.parquet").drop_columns(["click", "buy", "topic", "watch", "pos"])
