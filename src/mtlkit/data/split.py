"""Seeded random splits of an Arrow table.

Example:
    >>> import pyarrow as pa
    >>> parts = seeded_split(pa.table({"x": list(range(10))}), {"validation": 0.2, "test": 0.3}, seed=0)
    >>> {name: t.num_rows for name, t in parts.items()}
    {'train': 5, 'validation': 2, 'test': 3}
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa


def seeded_split(table: pa.Table, fractions: Mapping[str, float], seed: int = 0) -> dict[str, pa.Table]:
    """Shuffle rows with ``seed`` and cut off each named fraction; the rest is ``train``."""
    if sum(fractions.values()) >= 1.0 or any(f <= 0 for f in fractions.values()):
        raise ValueError("split fractions must be positive and sum to less than 1")
    order = np.random.default_rng(seed).permutation(table.num_rows)
    parts, start = {}, 0
    for name, fraction in fractions.items():
        count = int(round(fraction * table.num_rows))
        parts[name] = table.take(np.sort(order[start : start + count]))
        start += count
    return {"train": table.take(np.sort(order[start:])), **parts}
