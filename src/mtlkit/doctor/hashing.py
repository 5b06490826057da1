"""The data doctor's hash-collision report: per hashed categorical field, how many ids share a bucket.

For a feature with ``hash_buckets = B`` the training split's distinct values (after ``min_freq``
admission, :mod:`mtlkit.data.admission`) are hashed exactly as encoding hashes them
(``1 + FNV-1a mod B``). Reported per field:

- ``values`` (distinct non-null training values), ``admitted`` (those seen ≥ ``min_freq`` times;
  the others share the OOV row) and ``oov_row_share`` (rows sent to the OOV row by admission);
- ``occupied_buckets`` and ``value_collision_share``: admitted values whose bucket holds another
  admitted value — they share one embedding row;
- ``row_collision_share``: the training rows of those values, among the non-null rows (what the
  model actually feels: a collision between two frequent ids matters, two rare ones hardly);
- ``expected_value_collision_share = 1 − (1 − 1/B)^(n−1)`` for ``n`` admitted values under
  uniform hashing, to compare with (a much larger measured share means a skewed hash input).

A warning when ``row_collision_share`` exceeds ``Thresholds.hash_collision_share`` (10 %).

Example:
    >>> import pyarrow as pa
    >>> from mtlkit.data.schema import SchemaSpec
    >>> spec = SchemaSpec.model_validate({"categorical": [{"name": "user", "hash_buckets": 4}]})
    >>> data = SplitTables({"train": pa.table({"user": [f"u{i % 50}" for i in range(400)]})}, {"train": "t.csv"})
    >>> result = check_hash_collisions(data, spec, Thresholds())
    >>> stats = result.stats["user"]
    >>> stats["values"], stats["occupied_buckets"], stats["row_collision_share"]
    (50, 4, 1.0)
    >>> result.findings[0].message.split(";")[0]
    "t.csv: hashed feature 'user': 50 of 50 admitted values (100.0%) share one of 4 buckets with another value, 100.0% of its rows"
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtlkit.data.encoding import stable_hash
from mtlkit.data.schema import CategoricalFeature, SchemaSpec
from mtlkit.doctor.findings import CheckResult, Finding, Severity, Thresholds
from mtlkit.doctor.frame import SplitTables


def collision_stats(hashes: np.ndarray, buckets: int, min_freq: int = 1) -> dict[str, Any]:
    """The statistics of the module docstring from the non-null values' 64-bit hashes."""
    values, counts = np.unique(hashes, return_counts=True)
    keep = counts >= min_freq
    admitted, rows = values[keep], counts[keep]
    bucket = admitted % np.uint64(buckets)
    occupied, inverse, load = np.unique(bucket, return_inverse=True, return_counts=True)
    shared = load[inverse] > 1
    n, total = len(admitted), int(counts.sum())
    return {
        "buckets": buckets, "min_freq": min_freq, "rows": total, "values": len(values), "admitted": n,
        "oov_row_share": float(counts[~keep].sum() / total) if total else 0.0,
        "occupied_buckets": len(occupied),
        "value_collision_share": float(shared.mean()) if n else 0.0,
        "row_collision_share": float(rows[shared].sum() / total) if total else 0.0,
        "expected_value_collision_share": float(1 - (1 - 1 / buckets) ** max(n - 1, 0)),
    }


def _hashed(features: SchemaSpec) -> list[CategoricalFeature]:
    return [f for f in [*features.categorical, *features.bias] if f.hash_buckets]


def check_hash_collisions(data: SplitTables, features: SchemaSpec, thresholds: Thresholds) -> CheckResult:
    """Collision statistics per hashed categorical feature, on the training split."""
    result = CheckResult(stats={})
    for feature in _hashed(features):
        strings = data.strings("train", feature.name).drop_null()
        assert feature.hash_buckets is not None
        stats = collision_stats(stable_hash(strings), feature.hash_buckets, feature.min_freq)
        result.stats[feature.name] = stats
        if stats["row_collision_share"] > thresholds.hash_collision_share:
            colliding = round(stats["value_collision_share"] * stats["admitted"])
            result.findings.append(Finding(
                "hash_collisions", Severity.WARNING,
                f"{data.source('train')}: hashed feature {feature.name!r}: {colliding} of {stats['admitted']} admitted values "
                f"({100 * stats['value_collision_share']:.1f}%) share one of {feature.hash_buckets} buckets with another value, "
                f"{100 * stats['row_collision_share']:.1f}% of its rows; raise hash_buckets (or min_freq to admit fewer values)",
                "train", column=feature.name, count=colliding, share=stats["row_collision_share"]))
    return result


__all__ = ["check_hash_collisions", "collision_stats"]
