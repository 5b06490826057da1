"""How much multi-task training helps each task, relative to single-task training.

``mtl_gain`` is the PLE paper's MTL gain (Tang et al., RecSys 2020, Eq. 11):
``(M_mtl - M_single) / M_single`` for a metric where higher is better, with the sign flipped
for a loss-like metric, so a positive gain always means MTL helped. ``delta_m`` averages those
relative gains over tasks (Maninis et al., CVPR 2019), reported in percent.

Example:
    >>> round(mtl_gain(0.95, 0.94, higher_is_better=True), 5)
    0.01064
    >>> round(mtl_gain(0.9, 1.0, higher_is_better=False), 5)
    0.1
    >>> round(delta_m({"a": 0.95, "b": 0.9}, {"a": 0.94, "b": 1.0}, {"a": True, "b": False}), 3)
    5.532
"""

from __future__ import annotations

from collections.abc import Mapping


def mtl_gain(mtl: float, single: float, higher_is_better: bool) -> float:
    if single == 0:
        return float("nan")
    gain = (mtl - single) / abs(single)
    return gain if higher_is_better else -gain


def delta_m(
    mtl: Mapping[str, float], single: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    gains = [mtl_gain(mtl[k], single[k], higher_is_better[k]) for k in mtl]
    return 100.0 * sum(gains) / len(gains)
