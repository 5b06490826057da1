"""Fixed loss weights: ``L = Σ_k w_k · L_k`` (the "equal weighting" baseline when all w_k = 1).

``reduction="sum"`` (default) adds the weighted losses, so each task's gradient has the scale
it would have alone; ``reduction="mean"`` divides by the number of tasks, which keeps the total
loss scale fixed as tasks are added (halve the learning rate's effective size at T = 2).
Weights come from each task's ``loss_weight`` unless ``weights`` overrides them.

Example:
    >>> import torch
    >>> b = FixedWeights(["a", "b"], FixedWeights.Options(reduction="mean"), {"a": 1.0, "b": 3.0})
    >>> b.combine({"a": torch.tensor(2.0), "b": torch.tensor(1.0)})
    tensor(2.5000)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from mtlkit.balancing.base import BALANCERS, BalancerOptions, LossWeighting, stack_losses


class FixedOptions(BalancerOptions):
    reduction: Literal["sum", "mean"] = "sum"
    weights: dict[str, float] | None = None


@BALANCERS.register("fixed")
class FixedWeights(LossWeighting):
    Options = FixedOptions
    options: FixedOptions
    weight_vector: Tensor

    def __init__(self, task_names: Sequence[str], options: FixedOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, {**(loss_weights or {}), **(options.weights or {})})
        self.register_buffer("weight_vector", torch.tensor([self.loss_weights[t] for t in self.task_names]), persistent=False)
        self.divisor = float(len(self.task_names)) if options.reduction == "mean" else 1.0

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = stack_losses(losses, self.task_names)
        return (self.weight_vector.to(stacked) * stacked).sum() / self.divisor
