"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, Eq. 7).

    λ_k(t) = T · exp(w_k(t−1)/τ) / Σ_i exp(w_i(t−1)/τ),    w_k(t−1) = L_k(t−1) / L_k(t−2)

where ``L_k(t)`` is task k's mean training loss over epoch ``t`` (from :meth:`epoch_end`), ``τ``
the temperature (2 in the paper) and ``T`` the number of tasks, so the weights sum to ``T``.
For the first two epochs ``λ_k = 1``. A task whose loss two epochs ago was 0 (it had no labelled
rows) gets the ratio 1. The combined loss is ``Σ_k λ_k(t)·loss_weight_k·L_k``; the weights
change only at epoch ends, so the step itself is a plain weighted sum.

Options: ``temperature`` (τ, default 2).

Example:
    >>> import torch
    >>> b = DWA(["a", "b"], DWA.Options())
    >>> b.epoch_end(0, {"a": 1.0, "b": 1.0}); b.epoch_end(1, {"a": 0.5, "b": 0.9})
    >>> w = b.current_weights()
    >>> round(w["a"], 4), round(w["a"] + w["b"], 6)
    (0.9003, 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS, BalancerOptions, LossWeighting, stack_losses


class DWAOptions(BalancerOptions):
    temperature: float = Field(default=2.0, gt=0)


@BALANCERS.register("dwa")
class DWA(LossWeighting):
    Options = DWAOptions
    options: DWAOptions
    lambdas: Tensor
    history: Tensor
    epochs_seen: Tensor
    weights: Tensor

    def __init__(self, task_names: Sequence[str], options: DWAOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        t = len(self.task_names)
        self.register_buffer("lambdas", torch.tensor([self.loss_weights[n] for n in self.task_names]), persistent=False)
        # Epoch-mean losses of the last two epochs, how many epochs were seen, and λ(t).
        self.register_buffer("history", torch.zeros(2, t, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(t))

    def epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        current = torch.tensor([float(mean_losses.get(n, 0.0)) for n in self.task_names], dtype=torch.float64)
        self.history[0] = self.history[1].clone()
        self.history[1] = current.to(self.history.device)
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            before, last = self.history[0], self.history[1]
            ratio = torch.where(before > 0, last / before.clamp_min(1e-300), torch.ones_like(last))
            self.weights.copy_(len(self.task_names) * torch.softmax(ratio / self.options.temperature, dim=0))

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = stack_losses(losses, self.task_names)
        return (self.weights.to(stacked) * self.lambdas.to(stacked) * stacked).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, (self.weights * self.lambdas).tolist()))


__all__ = ["DWA", "DWAOptions"]
