"""Minimum-count admission for hashed categorical features (``hash_buckets`` with ``min_freq``).

Without hashing, ``min_freq`` keeps a value in the vocabulary only if training saw it at least
``min_freq`` times; rarer values share the OOV row 0. With ``hash_buckets`` there is no
vocabulary, so the admitted values are kept as the sorted set of their 64-bit FNV-1a hashes
(:func:`mtlkit.data.schema.stable_hash`, the hash that also picks the bucket): a value is
admitted iff its hash is in the set, then hashed into bucket ``1 + h mod B``; any other value gets
id 0. So an id seen fewer than ``k`` times in training never trains (nor serves from) a bucket
row of its own; it cannot add noise to a frequent id's bucket either.

The set costs 8 bytes per admitted value in ``schema.json`` (base64, about 11 characters), i.e. it
grows with the admitted ids, not with all ids (the long tail admission removes is usually most of
them); two distinct values share a 64-bit hash with probability ~n²/2⁶⁵ (negligible below 10⁸
values). Encoding a value is a binary search in the set (``np.searchsorted``), vectorised.

Example:
    >>> import numpy as np
    >>> hashes = np.array([7, 3, 7, 9, 3, 7], dtype=np.uint64)
    >>> kept = admitted(hashes, min_freq=2)
    >>> kept.tolist(), unpack(pack(kept)).tolist()
    ([3, 7], [3, 7])
    >>> is_admitted(np.array([9, 7, 3], dtype=np.uint64), kept).tolist()
    [False, True, True]
"""

from __future__ import annotations

import base64

import numpy as np


def admitted(hashes: np.ndarray, min_freq: int) -> np.ndarray:
    """The sorted distinct hashes that occur at least ``min_freq`` times in ``hashes``."""
    values, counts = np.unique(hashes.astype(np.uint64, copy=False), return_counts=True)
    return values[counts >= min_freq]


def is_admitted(hashes: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Which of ``hashes`` are in the sorted set ``kept``."""
    if not len(kept):
        return np.zeros(len(hashes), dtype=bool)
    position = np.minimum(np.searchsorted(kept, hashes), len(kept) - 1)
    return kept[position] == hashes


def pack(kept: np.ndarray) -> str:
    """The set as JSON-safe text (base64 of little-endian uint64)."""
    return base64.b64encode(kept.astype("<u8").tobytes()).decode("ascii")


def unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u8").astype(np.uint64)


__all__ = ["admitted", "is_admitted", "pack", "unpack"]
