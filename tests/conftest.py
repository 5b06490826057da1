"""Shared fixtures: small tables and a path to the read-only shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtlkit.data.batch import BatchSource

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)  # tiny models: a second OpenMP thread only spin-waits on a shared 2-core box


@pytest.fixture
def census_root() -> Path:
    root = SHARED_DATA / "census_income_kdd"
    assert root.exists(), f"tests need the shared data at {root}"
    return root


def click_table(n: int = 600, seed: int = 0) -> pa.Table:
    """A tiny two-task ranking table where both labels depend on the features."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 20, n)
    item = rng.integers(0, 30, n)
    price = rng.lognormal(3, 1, n)
    user_bias = np.linspace(-2, 2, 20)[user]
    item_bias = np.sin(item)
    score = user_bias + item_bias - 0.3 * np.log1p(price)
    click = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(np.int64)
    buy = ((rng.random(n) < 1 / (1 + np.exp(-(score - 1)))) & (click == 1)).astype(np.int64)
    return pa.table({
        "user": [f"u{u}" for u in user],
        "item": item,
        "price": price,
        "click": click,
        "buy": buy,
    })


class InterruptAfter(BatchSource):
    """A batch source that raises KeyboardInterrupt (like Ctrl-C) after `steps` steps."""

    def __init__(self, source, steps):
        self.source, self.steps, self.seen = source, steps, 0

    def __len__(self):
        return len(self.source)

    def epoch(self, epoch=0, start_step=0):
        for batches in self.source.epoch(epoch, start_step):
            if self.seen == self.steps:
                raise KeyboardInterrupt
            self.seen += 1
            yield batches
