"""Negative down-sampling of a training table, at a stated rate that the task then corrects for.

He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", ADKDD 2014, §6.2:
keep every positive and each negative with probability ``rate`` (Bernoulli per row, so the
kept count is ``rate·N₀`` in expectation). A model fit on the result learns odds inflated by
``1/rate``; give the task ``negative_sampling_rate: rate`` and :meth:`mtlkit.tasks.Task.predict`
returns ``p / (p + (1 − p)/rate)``, calibrated to the unsampled data.

Sample the training split only: validation and test must keep the world's base rate. In a
multi-task table the rows dropped are gone for every task; sampling on the click label is safe
for tasks that live inside the click space (every click is kept), not for independent ones.

Example:
    >>> import pyarrow as pa
    >>> table = pa.table({"click": [1, 0, 0, 0, 0, 0, 0, 0, None, 1], "x": list(range(10))})
    >>> sampled = downsample_negatives(table, "click", rate=0.5, seed=0)
    >>> sampled.column("click").to_pylist()       # both positives and the unlabelled row stay
    [1, 0, 0, 0, None, 1]
    >>> downsample_negatives(table, "click", rate=0.5, seed=0).equals(sampled)   # seeded
    True
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mtlkit.data.encoding import float_column
from mtlkit.errors import ConfigError, DataError


def downsample_negatives(table: pa.Table, label: str, rate: float, seed: int = 0, source: str = "data") -> pa.Table:
    """Keep all rows with ``label`` ≠ 0 (positives, missing labels) and each 0 with probability ``rate``.

    Vectorised (one uniform draw per row) and deterministic in ``seed``; row order is kept.
    Raises ConfigError for a rate outside (0, 1], DataError for a missing or non-binary label.
    """
    if not (isinstance(rate, (int, float)) and 0.0 < rate <= 1.0):
        raise ConfigError(f"negative sampling rate must be in (0, 1], got {rate!r}")
    if label not in table.column_names:
        raise DataError(f"{source}: missing label column {label!r} (asked to down-sample its negatives)")
    values = float_column(table, label, source)  # booleans and numbers as float64, nulls as NaN
    bad = ~np.isnan(values) & (values != 0) & (values != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: label column {label!r} data row {row + 1}: value {float(values[row])!r} (expected 0 or 1)")
    if rate == 1.0:
        return table
    # One draw per row, not per negative: a row's fate does not depend on the other rows' labels.
    keep = (values != 0) | (np.random.default_rng(seed).random(len(values)) < rate)
    return table.filter(pa.array(keep))


__all__ = ["downsample_negatives"]
