"""Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022, Eq. 4).

At every step the weights are drawn afresh: ``λ = softmax(z)``, ``z ~ N(0, I_T)``, and the loss is
``Σ_k λ_k·loss_weight_k·L_k``; the weights sum to 1 (times ``scale``). The softmax runs over the
tasks present in the step (absent tasks and fully masked ones, whose loss is exactly 0, get
weight 0). Draws use torch's global RNG on the loss's device (reproducible under a seed).

Options: ``scale`` (the sum of the weights, default 1 as in the paper; set it to the number of
tasks to match the scale of the ``fixed`` sum).

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> b = RLW(["a", "b", "c"], RLW.Options())
    >>> total = b.combine({"a": torch.tensor(1.0), "b": torch.tensor(1.0), "c": torch.tensor(0.0)})
    >>> round(float(total), 6), b.current_weights()["c"]        # weights sum to 1; c is absent
    (1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS, BalancerOptions, LossWeighting, stack_losses
from mtlkit.balancing.gradient import masked_softmax


class RLWOptions(BalancerOptions):
    scale: float = Field(default=1.0, gt=0)


@BALANCERS.register("rlw")
class RLW(LossWeighting):
    Options = RLWOptions
    options: RLWOptions
    lambdas: Tensor
    last_weights: Tensor

    def __init__(self, task_names: Sequence[str], options: RLWOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        self.register_buffer("lambdas", torch.tensor([self.loss_weights[t] for t in self.task_names]), persistent=False)
        self.register_buffer("last_weights", torch.full((len(self.task_names),), 1.0 / len(self.task_names)), persistent=False)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = stack_losses(losses, self.task_names)
        z = torch.randn(len(self.task_names), device=stacked.device, dtype=stacked.dtype)
        w = self.options.scale * masked_softmax(z, stacked != 0)
        self.last_weights = w
        return (w * self.lambdas.to(stacked) * stacked).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, (self.last_weights * self.lambdas.to(self.last_weights)).tolist()))


__all__ = ["RLW", "RLWOptions"]
