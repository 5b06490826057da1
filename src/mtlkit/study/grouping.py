"""Task grouping under a budget of ``k`` models (Fifty et al., NeurIPS 2021, Eq. 3 / network selection).

Given the affinity matrix ``Z`` (``Z[i, j]``: task ``i``'s step onto task ``j``'s loss), a group
``G`` serves each member ``j`` with the mean affinity of the other members onto it,
``a(G, j) = mean_{i ∈ G, i ≠ j} Z[i, j]`` (0 for a task alone: no transfer). A selection of at most
``k`` groups must serve every task; each task is served by its best group, and the selection
maximises the total ``Σ_j max_{G ∋ j} a(G, j)``. For few tasks every selection is scored (the
paper's exhaustive search); ties go to fewer groups, then fewer task slots.

Example:
    >>> z = np.array([[0, .3, .3, -.2], [.3, 0, .3, -.2], [.3, .3, 0, -.2], [-.2, -.2, -.2, 0]])
    >>> best_grouping(z, 2).groups
    [(0, 1, 2), (3,)]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

MAX_SELECTIONS = 300_000


@dataclass(frozen=True)
class Grouping:
    groups: list[tuple[int, ...]]
    score: float


def group_affinity(z: np.ndarray, group: tuple[int, ...], task: int) -> float:
    others = [i for i in group if i != task]
    return float(np.mean([z[i, task] for i in others])) if others else 0.0


def selection_score(z: np.ndarray, groups: tuple[tuple[int, ...], ...]) -> float | None:
    """Total affinity of a selection, or None when some task is not served."""
    total = 0.0
    for task in range(z.shape[0]):
        served = [group_affinity(z, g, task) for g in groups if task in g]
        if not served:
            return None
        total += max(served)
    return total


def best_grouping(z: np.ndarray, budget: int) -> Grouping:
    """The selection of at most ``budget`` groups with the highest total affinity."""
    n = z.shape[0]
    candidates = [c for size in range(1, n + 1) for c in itertools.combinations(range(n), size)]
    best: tuple[float, int, int] | None = None
    chosen: tuple[tuple[int, ...], ...] = ()
    evaluated = 0
    for k in range(1, min(budget, n) + 1):
        for selection in itertools.combinations(candidates, k):
            evaluated += 1
            if evaluated > MAX_SELECTIONS:
                break
            score = selection_score(z, selection)
            if score is None:
                continue
            key = (round(score, 12), -k, -sum(len(g) for g in selection))
            if best is None or key > best:
                best, chosen = key, selection
    assert best is not None
    return Grouping(sorted(chosen, key=lambda g: (-len(g), g)), best[0])


__all__ = ["Grouping", "best_grouping", "group_affinity", "selection_score"]
