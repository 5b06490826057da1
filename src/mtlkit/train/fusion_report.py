"""How well the fused ranking score serves each objective, next to the task's own prediction.

A fused score trades objectives against each other: ranking by ``pCTR^a · (1 + watch)^b`` gives
up some click AUC for watch time. This report measures that trade-off on a split: for every
binary or regression task, the ranking metrics (AUC for binary tasks; GAUC and NDCG@10 within
the task's ``group_column`` when it has one; NDCG is scored with the label as gain) of the
fused score and of the task's own prediction, over the rows the task counts.

Example:
    >>> import torch
    >>> from mtlkit.data.batch import EncodedTable
    >>> from mtlkit.models.fusion import FusionSpec
    >>> from mtlkit.tasks import Task
    >>> class TwoTasks(torch.nn.Module):
    ...     fusion = FusionSpec(weights={"a": 1.0, "b": 0.5})
    ...     tasks = {"a": Task(name="a", kind="binary"), "b": Task(name="b", kind="binary")}
    ...     def forward(self, inputs):
    ...         x = inputs["numeric"]
    ...         return {"a": x[:, 0], "b": x[:, 1]}
    ...     def fused_score(self, logits):
    ...         return self.fusion.score({k: torch.sigmoid(v) for k, v in logits.items()})
    >>> table = EncodedTable(inputs={"numeric": torch.tensor([[3.0, -3.0], [-3.0, 3.0], [0.0, 0.0]])},
    ...                      targets={"a": torch.tensor([1.0, 0.0, 0.0]), "b": torch.tensor([0.0, 1.0, 0.0])},
    ...                      masks={"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(3, dtype=torch.bool)})
    >>> report = fusion_report(TwoTasks(), list(TwoTasks.tasks.values()), table)
    >>> report["a"]["fused/auc"], report["b"]["own/auc"], report["b"]["fused/auc"]  # b pays for a
    (1.0, 1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from mtlkit.data.batch import EncodedTable
from mtlkit.metrics import METRICS
from mtlkit.tasks import Task, TaskKind
from mtlkit.train.evaluate import predict_logits


def fusion_report(model: nn.Module, tasks: Sequence[Task], table: EncodedTable, batch_size: int = 8192,
                  device: str = "cpu") -> dict[str, dict[str, float]]:
    """Per task: ``own/<metric>`` and ``fused/<metric>`` over the task's counted rows."""
    logits = predict_logits(model, table, batch_size, device)
    fused = model.fused_score(logits).numpy()  # type: ignore[operator]
    report: dict[str, dict[str, float]] = {}
    for task in tasks:
        if task.kind is TaskKind.MULTICLASS or task.name not in table.targets:
            continue
        keep = table.masks[task.name].numpy()
        labels = table.targets[task.name].numpy()[keep]
        own = task.predict(logits[task.name]).numpy()[keep]
        groups = table.extras[task.group_column].numpy()[keep] if task.group_column else None
        if task.kind is TaskKind.BINARY:
            names = ["auc"] + (["gauc", "ndcg@10"] if groups is not None else [])
        elif groups is not None and not np.any(labels < 0):
            names = ["ndcg@10"]  # a graded label (watch time) ranks only within requests
        else:
            continue
        row: dict[str, float] = {"rows": int(keep.sum())}
        for name in names:
            metric = METRICS.get(name)
            row[f"own/{name}"] = metric(own, labels, groups)
            row[f"fused/{name}"] = metric(fused[keep], labels, groups)
        report[task.name] = row
    return report


__all__ = ["fusion_report"]
