"""Geometric loss strategy (Chennupati et al., "MultiNet++", CVPR Workshops 2019, Eq. 2).

    L = (Π_k L_k)^{1/T}  =  exp((1/T) Σ_k log L_k)

The geometric mean is invariant to each task's loss scale: ``∂L/∂θ = (L/T) Σ_k ∇L_k / L_k``, i.e.
every task's gradient is divided by its own loss. Computed in log space; a task that is absent or
has no labelled rows (loss exactly 0, which would make the product 0 and its gradient NaN) is
left out and ``T`` counts the present tasks only. Losses must be positive (``loss_weight`` scales
them first).

Options: none.

Example:
    >>> import torch
    >>> b = GLS(["a", "b", "c"], GLS.Options())
    >>> b.combine({"a": torch.tensor(2.0), "b": torch.tensor(8.0), "c": torch.tensor(0.0)})   # √(2·8)
    tensor(4.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlkit.balancing.base import BALANCERS, BalancerOptions, LossWeighting, stack_losses


class GLSOptions(BalancerOptions):
    pass


@BALANCERS.register("gls")
class GLS(LossWeighting):
    Options = GLSOptions
    options: GLSOptions
    lambdas: Tensor
    last_weights: Tensor

    def __init__(self, task_names: Sequence[str], options: GLSOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        self.register_buffer("lambdas", torch.tensor([self.loss_weights[t] for t in self.task_names]), persistent=False)
        self.register_buffer("last_weights", torch.ones(len(self.task_names)), persistent=False)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        raw = stack_losses(losses, self.task_names)
        stacked = self.lambdas.to(raw) * raw
        present = stacked > 0
        safe = torch.where(present, stacked, torch.ones_like(stacked))  # the double `where` keeps NaN out of the gradient
        logs = torch.where(present, torch.log(safe), torch.zeros_like(stacked))
        count = present.sum().clamp_min(1)
        total = torch.where(present.any(), torch.exp(logs.sum() / count), torch.zeros_like(logs[0]))
        # ∂total/∂L_k = λ_k·total / (T·λ_k L_k): the effective weight of each raw loss, for logging.
        effective = total.detach() * self.lambdas.to(raw) / (count * safe.detach())
        self.last_weights = torch.where(present, effective, torch.zeros_like(effective))
        return total

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.last_weights.tolist()))


__all__ = ["GLS", "GLSOptions"]
