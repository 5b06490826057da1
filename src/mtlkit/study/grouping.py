"""Task grouping under a budget of ``k`` models (after Fifty et al., NeurIPS 2021, Eq. 3).

Given the affinity matrix ``Z`` (``Z[i, j]``: task ``i``'s step onto task ``j``'s loss), a group
``G`` serves each member ``j`` with the mean affinity of the other members onto it,
``a(G, j) = mean_{i ∈ G, i ≠ j} Z[i, j]`` (0 for a task alone: no transfer), and a grouping's score
is ``Σ_j a(G(j), j)``. The paper's network selection lets groups overlap (a task may be trained
in several models and served by its best one); here the groups are a *partition* — every task is
trained in exactly one of at most ``k`` models — so that the answer is a deployable set of
models and an unrelated task cannot ride along as an auxiliary of a group that does not serve it.
Every partition is scored (exhaustive, as in the paper, for the handful of tasks a study has);
ties go to fewer groups.

Example:
    >>> z = np.array([[0, .3, .3, -.2], [.3, 0, .3, -.2], [.3, .3, 0, -.2], [-.2, -.2, -.2, 0]])
    >>> best_grouping(z, 2).groups
    [(0, 1, 2), (3,)]
    >>> best_grouping(z, 1).groups
    [(0, 1, 2, 3)]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grouping:
    groups: list[tuple[int, ...]]
    score: float


def group_affinity(z: np.ndarray, group: tuple[int, ...], task: int) -> float:
    others = [i for i in group if i != task]
    return float(np.mean([z[i, task] for i in others])) if others else 0.0


def partitions(items: list[int], most: int) -> Iterator[list[list[int]]]:
    """Every partition of ``items`` into at most ``most`` blocks."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest, most):
        for i in range(len(smaller)):
            yield [*smaller[:i], [first, *smaller[i]], *smaller[i + 1:]]
        if len(smaller) < most:
            yield [[first], *smaller]


def grouping_score(z: np.ndarray, groups: list[tuple[int, ...]]) -> float:
    return sum(group_affinity(z, g, j) for g in groups for j in g)


def best_grouping(z: np.ndarray, budget: int) -> Grouping:
    """The partition into at most ``budget`` groups with the highest total affinity."""
    n = z.shape[0]
    best: tuple[float, int] | None = None
    chosen: list[tuple[int, ...]] = []
    for blocks in partitions(list(range(n)), budget):
        groups = [tuple(sorted(b)) for b in blocks]
        key = (round(grouping_score(z, groups), 12), -len(groups))
        if best is None or key > best:
            best, chosen = key, groups
    assert best is not None
    return Grouping(sorted(chosen, key=lambda g: (-len(g), g)), best[0])


__all__ = ["Grouping", "best_grouping", "group_affinity", "grouping_score", "partitions"]
