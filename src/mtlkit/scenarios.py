"""Metrics per scenario: every task's metrics on the rows of each value of the scenario column.

Multi-scenario models (STAR, scenario-personalised gates) are judged scenario by scenario, as
their papers report them (STAR, Sheng et al. CIKM 2021, Table 3: AUC per domain): a model can win
on the pooled rows and lose on a small scenario. ``model.scenario`` names the column; the rows of
values unseen in training (id 0) are reported as ``(unseen)``.

Example:
    >>> from mtlkit.data.features import FittedCategorical
    >>> scenario_names(FittedCategorical(name="country", vocabulary=["ES", "FR"]), [0, 2])
    ['(unseen)', 'FR']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlkit.data.batch import EncodedTable
from mtlkit.data.features import FittedCategorical
from mtlkit.tasks import Task

UNSEEN = "(unseen)"


def scenario_names(feature: FittedCategorical, ids: Sequence[int]) -> list[str]:
    """Readable names of scenario ids: the vocabulary value, ``bucket<id>`` for a hashed column, ``(unseen)`` for 0."""
    names = []
    for i in ids:
        if i == 0:
            names.append(UNSEEN)
        elif feature.hash_buckets:
            names.append(f"bucket{i}")
        else:
            names.append(feature.vocabulary[i - 1])
    return names


def scenario_metrics(model: nn.Module, tasks: Sequence[Task], table: EncodedTable, feature: FittedCategorical,
                     field: int, batch_size: int = 8192) -> dict[str, dict[str, dict[str, float]]]:
    """``{scenario: {task: metrics}}`` on ``table``'s rows of each scenario present (field ``field`` of the categoricals)."""
    from mtlkit.train import evaluate

    ids = table.inputs["categorical"][:, field]
    present = sorted(int(i) for i in torch.unique(ids))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, i in zip(scenario_names(feature, present), present):
        rows = torch.nonzero(ids == i).flatten()
        out[name] = evaluate(model, tasks, table.subset(rows), batch_size)
    return out


__all__ = ["UNSEEN", "scenario_metrics", "scenario_names"]
