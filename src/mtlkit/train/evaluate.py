"""Whole-split evaluation: logits gathered on the device, one transfer, vectorised metrics.

Example:
    >>> import torch
    >>> from mtlkit.data.batch import EncodedTable
    >>> from mtlkit.tasks import Task
    >>> class Echo(torch.nn.Module):
    ...     def forward(self, inputs):
    ...         return {"y": inputs["numeric"][:, 0]}
    >>> table = EncodedTable(inputs={"numeric": torch.tensor([[-2.0], [3.0], [1.0], [-1.0]])},
    ...                      targets={"y": torch.tensor([0.0, 1.0, 1.0, 1.0])},
    ...                      masks={"y": torch.tensor([True, True, True, False])})
    >>> result = evaluate(Echo(), [Task(name="y", kind="binary")], table)
    >>> result["y"]["auc"], result["y"]["rows"]      # the masked-out row is not scored
    (1.0, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mtlkit.data.batch import EncodedTable
from mtlkit.metrics import METRICS
from mtlkit.tasks import Task


@torch.no_grad()
def predict_logits(model: nn.Module, table: EncodedTable, batch_size: int = 8192, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Logits of every task for every row of ``table``, on the CPU."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    try:
        for step in table.batches(batch_size).epoch():
            for batch in step:
                for name, logits in model(batch.to(device).inputs).items():
                    chunks.setdefault(name, []).append(logits.float())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts).cpu() for name, parts in chunks.items()}


def evaluate(
    model: nn.Module,
    tasks: Sequence[Task],
    table: EncodedTable,
    batch_size: int = 8192,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, float]]:
    """Per task: its loss, every configured metric, and the number of rows scored."""
    logits = predict_logits(model, table, batch_size, device)
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        if task.name not in table.targets:
            continue
        mask = table.masks[task.name]
        weight = table.weights.get(task.name)
        task_logits, target = logits[task.name], table.targets[task.name]
        if task.name in table.groups:  # ranking losses cost O(B²): scored on contiguous chunks
            loss = _chunked_group_loss(task, task_logits, target, weight, mask, table.groups[task.name])
        else:
            loss = float(task.compute_loss(task_logits, target, weight, mask))
        result = {"loss": loss, "rows": int(mask.sum())}
        keep = mask.numpy()
        # Calibrated (negative sampling undone), in label units; binary always a probability.
        predictions = task.predict_for_metrics(task_logits).numpy()[keep]
        labels = target.numpy()[keep]
        groups = table.extras[task.group_column].numpy()[keep] if task.group_column else None
        for name in task.metrics or []:
            result[name] = METRICS.get(name)(predictions, labels, groups)
        results[task.name] = result
    return results


GROUP_LOSS_CHUNK = 4096


def _chunked_group_loss(task: Task, logits: Tensor, target: Tensor, weight: Tensor | None, mask: Tensor, groups: Tensor) -> float:
    """A group loss over contiguous chunks of rows, averaged by the rows each counts (exact when
    no group straddles a chunk boundary, as for a log sorted by request)."""
    total, rows = 0.0, 0
    for start in range(0, len(target), GROUP_LOSS_CHUNK):
        part = slice(start, start + GROUP_LOSS_CHUNK)
        counted = int(mask[part].sum())
        if counted:
            value = task.compute_loss(logits[part], target[part], weight[part] if weight is not None else None, mask[part], group=groups[part])
            total += float(value) * counted
            rows += counted
    return total / rows if rows else 0.0


@dataclass(frozen=True)
class TableEvaluator:
    """The :class:`~mtlkit.protocols.Evaluator` of one labelled tabular split: :func:`evaluate` on it."""

    tasks: Sequence[Task]
    table: EncodedTable
    batch_size: int = 8192

    def evaluate(self, model: nn.Module, device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
        return evaluate(model, self.tasks, self.table, self.batch_size, device)


def flatten_metrics(results: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """``{"income": {"auc": .9}}`` → ``{"val/income/auc": .9}``."""
    return {f"{prefix}/{task}/{name}": value for task, metrics in results.items() for name, value in metrics.items()}


def is_finite(value: float) -> bool:
    return bool(np.isfinite(value))
