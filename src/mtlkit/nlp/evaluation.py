"""Evaluate every NLP task on its own split: the validation object :class:`~mtlkit.train.Trainer` calls.

For each task, rows are run in order of length (so trimming each batch to its longest row
removes most padding), the batch's loss is accumulated on the device, the head outputs pass
through ``task.eval_outputs`` and are gathered on the host, put back in table order, and
handed to ``task.evaluate(outputs, table, examples)``. The result per task is
``{"loss": …, "rows": …, <metrics>}`` — what model selection and ``metrics.jsonl`` read.

Gathering (:func:`gather`): tensors are concatenated on dim 0; when their dim 1 differs
(per-batch trimmed sequence length) they are right-padded to the longest — floats with
:data:`~mtlkit.nlp.heads.PAD_LOGIT`, so a padded position never wins an argmax, integers with
0, booleans with False. Tuples, lists and dicts of tensors are gathered element-wise.

Random per-batch transforms (masked-LM masking) draw from a generator seeded by the batch's
position, so every epoch is scored on the same masked tokens.

Example:
    >>> import torch
    >>> gather([torch.ones(1, 3), torch.zeros(2, 1)]).tolist()
    [[1.0, 1.0, 1.0], [0.0, -10000.0, -10000.0], [0.0, -10000.0, -10000.0]]
    >>> [t.shape for t in gather([(torch.ones(2, 4), torch.ones(2)), (torch.ones(1, 2), torch.ones(1))])]
    [torch.Size([3, 4]), torch.Size([3])]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.data.batch import EncodedTable
from mtlkit.nlp.base import NLPTask
from mtlkit.nlp.heads import PAD_LOGIT
from mtlkit.nlp.sampling import step_generator

EVAL_SEED = 20_190_601  # fixed: validation masks must not depend on the run's seed or epoch


def _pad_value(t: Tensor) -> Any:
    if t.dtype == torch.bool:
        return False
    return PAD_LOGIT if t.is_floating_point() else 0


def gather(chunks: Sequence[Any]) -> Any:
    """One output from per-batch outputs (see the module docstring)."""
    first = chunks[0]
    if isinstance(first, Tensor):
        if first.dim() >= 2 and len({c.shape[1] for c in chunks}) > 1:
            length = max(c.shape[1] for c in chunks)
            chunks = [F.pad(c, (0, 0) * (c.dim() - 2) + (0, length - c.shape[1]), value=_pad_value(c)) for c in chunks]
        return torch.cat(list(chunks))
    if isinstance(first, (tuple, list)):
        return type(first)(gather([c[i] for c in chunks]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: gather([c[k] for c in chunks]) for k in first}
    raise TypeError(f"cannot gather head outputs of type {type(first).__name__}")


def _reorder(outputs: Any, index: Tensor) -> Any:
    if isinstance(outputs, Tensor):
        return outputs[index]
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_reorder(o, index) for o in outputs)
    return {k: _reorder(v, index) for k, v in outputs.items()}


def _to_cpu(outputs: Any) -> Any:
    if isinstance(outputs, Tensor):
        return outputs.detach().cpu()
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_to_cpu(o) for o in outputs)
    return {k: _to_cpu(v) for k, v in outputs.items()}


def length_order(table: EncodedTable) -> Tensor:
    """Row indices from the longest to the shortest text (stable, so deterministic)."""
    mask = table.inputs.get("attention_mask")
    if mask is None:
        return torch.arange(len(table))
    lengths = mask.flatten(1).sum(1) if mask.dim() > 1 else mask
    return torch.sort(lengths, descending=True, stable=True).indices


@torch.no_grad()
def predict_task(model: nn.Module, task: NLPTask, table: EncodedTable, batch_size: int,
                 device: str | torch.device = "cpu") -> tuple[Any, float, int]:
    """``(outputs in table order, mean loss, labelled rows)`` of ``task`` on ``table`` (model mode untouched)."""
    order = length_order(table)
    loss_sum = torch.zeros((), device=device)
    rows = torch.zeros((), device=device)
    chunks = []
    for i, start in enumerate(range(0, len(table), batch_size)):
        batch = task.transform_batch(table.take(order[start : start + batch_size]), step_generator(EVAL_SEED, 0, i))
        batch = batch.to(device)
        outputs = model(batch.inputs, (task.name,))[task.name]
        mask = batch.masks[task.name]
        loss = task.compute_loss(outputs, batch.targets[task.name], batch.weights.get(task.name), mask)
        loss_sum += loss.float() * mask.sum()
        rows += mask.sum()
        chunks.append(_to_cpu(task.eval_outputs(outputs, batch)))
    outputs = _reorder(gather(chunks), torch.argsort(order)) if chunks else None
    n = int(rows)  # one sync per task and split
    return outputs, float(loss_sum) / max(n, 1), n


def evaluate_task(model: nn.Module, task: NLPTask, table: EncodedTable, examples: Sequence[Any],
                  batch_size: int, device: str | torch.device = "cpu") -> dict[str, float]:
    outputs, loss, n = predict_task(model, task, table, batch_size, device)
    result: dict[str, float] = {"loss": loss, "rows": n}
    if outputs is not None:  # an empty table (no rows at all) has no metrics
        result.update(task.evaluate(outputs, table, examples))
    return result


class NLPValidation:
    """``evaluate(model, device) -> {task: {"loss", "rows", metric: value}}`` over each task's own table."""

    def __init__(self, tasks: Sequence[NLPTask], tables: Mapping[str, EncodedTable],
                 examples: Mapping[str, Sequence[Any]], batch_size: int = 64) -> None:
        self.tasks = [t for t in tasks if t.name in tables]
        self.tables = dict(tables)
        self.examples = dict(examples)
        self.batch_size = batch_size

    def evaluate(self, model: nn.Module, device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
        was_training = model.training
        model.eval()
        try:
            return {t.name: evaluate_task(model, t, self.tables[t.name], self.examples.get(t.name, []), self.batch_size, device)
                    for t in self.tasks}
        finally:
            model.train(was_training)


__all__ = ["EVAL_SEED", "NLPValidation", "evaluate_task", "gather", "length_order", "predict_task"]
