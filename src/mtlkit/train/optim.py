"""The optimiser of the dense parameters and the learning-rate schedule of a run.

Adam or AdamW (``train.optimizer``), fused (one kernel over all parameters instead of a Python loop
over them), in parameter groups:

- matrices decay (``train.weight_decay``); biases and normalisation scales (1-D tensors) do not —
  the usual AdamW recipe (Loshchilov & Hutter 2019; BERT), since shrinking them regularises nothing;
- task heads (:meth:`~mtlkit.protocols.TrainableModel.head_parameters`) at ``train.head_lr`` when
  set (PURE's fast heads on a slowly fine-tuned encoder);
- the balancer's own parameters (log-variances, GradNorm weights) without decay: decaying them
  towards 0 would bias the weighting itself.

The schedule (``train.schedule``): linear warm-up over ``warmup_steps``, then constant, linear
decay to 0 or a cosine to 0 over the remaining steps.

Example:
    >>> from mtlkit.train.spec import TrainSpec
    >>> factor = lr_schedule(TrainSpec(schedule="linear", warmup_steps=2), total_steps=6)
    >>> [round(factor(s), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from mtlkit.protocols import TrainableModel
from mtlkit.train.spec import TrainSpec


def parameter_groups(model: TrainableModel, spec: TrainSpec, extra: Iterable[nn.Parameter] = (),
                     exclude: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """The optimiser groups of the model's trainable parameters (minus ``exclude``), then ``extra`` without decay."""
    skip = {id(p) for p in exclude}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    groups: list[dict[str, Any]] = [{"params": [p for p in params if p.ndim > 1], "weight_decay": spec.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}] if spec.weight_decay else \
             [{"params": params, "weight_decay": 0.0}]
    if spec.head_lr is not None:  # the heads in groups of their own, at their own rate
        heads = {id(p) for p in model.head_parameters()}
        groups = [part for g in groups for part in (
            {**g, "params": [p for p in g["params"] if id(p) not in heads]},
            {**g, "params": [p for p in g["params"] if id(p) in heads], "lr": spec.head_lr})]
    groups = [g for g in groups if g["params"]]
    extra = [p for p in extra if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    return groups


def dense_optimizer(groups: list[dict[str, Any]], spec: TrainSpec) -> torch.optim.Optimizer:
    """Fused Adam/AdamW over ``groups`` (at least one parameter, or torch refuses an empty optimiser)."""
    optimizer_cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=spec.lr, fused=True)


def lr_schedule(spec: TrainSpec, total_steps: int) -> Callable[[int], float]:
    """The factor of ``train.lr`` at each step (a ``LambdaLR`` function)."""

    def factor(step: int) -> float:
        if spec.warmup_steps and step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, total_steps - spec.warmup_steps)
        if spec.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if spec.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


__all__ = ["dense_optimizer", "lr_schedule", "parameter_groups"]
