"""Scheduled loss weights of PLE (Tang et al., "Progressive Layered Extraction", RecSys 2020, §4.4).

    ω_k(t) = ω_{k,0} · γ_k^t,        L = Σ_k ω_k(t) · L_k

with ``ω_{k,0}`` the initial weight (the task's ``loss_weight`` unless ``initial`` overrides it)
and ``γ_k`` its update ratio (``gamma``, default 1: constant). ``t`` counts completed epochs
(``unit="epoch"``, as in the paper: the weight is constant within an epoch) or optimisation steps
(``unit="step"``). E.g. ``gamma: {vcr: 1.05, vtr: 0.95}`` moves the emphasis from one task to
the other over training. The counter is saved in checkpoints.

Options: ``initial`` (task → ω_{k,0}), ``gamma`` (task → γ_k), ``unit`` (``"epoch"`` | ``"step"``).

Example:
    >>> import torch
    >>> b = ScheduledWeights(["a", "b"], ScheduledWeights.Options(gamma={"a": 0.5}))
    >>> b.epoch_end(0, {}); b.epoch_end(1, {})
    >>> b.combine({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}), b.current_weights()
    (tensor(1.2500), {'a': 0.25, 'b': 1.0})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import field_validator
from torch import Tensor

from mtlkit.balancing.base import BALANCERS, BalancerOptions, LossWeighting, stack_losses
from mtlkit.errors import ConfigError


class ScheduledOptions(BalancerOptions):
    initial: dict[str, float] | None = None
    gamma: dict[str, float] = {}
    unit: Literal["epoch", "step"] = "epoch"

    @field_validator("gamma")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(g <= 0 for g in value.values()):
            raise ValueError("gamma values must be positive")
        return value


@BALANCERS.register("scheduled")
class ScheduledWeights(LossWeighting):
    Options = ScheduledOptions
    options: ScheduledOptions
    initial: Tensor
    gammas: Tensor
    t: Tensor

    def __init__(self, task_names: Sequence[str], options: ScheduledOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, {**(loss_weights or {}), **(options.initial or {})})
        unknown = sorted((set(options.gamma) | set(options.initial or {})) - set(self.task_names))
        if unknown:
            raise ConfigError(f"balancer 'scheduled': options name unknown tasks {unknown}")
        self.register_buffer("initial", torch.tensor([self.loss_weights[t] for t in self.task_names]), persistent=False)
        self.register_buffer("gammas", torch.tensor([float(options.gamma.get(t, 1.0)) for t in self.task_names]), persistent=False)
        self.register_buffer("t", torch.zeros((), dtype=torch.long))

    def weights(self) -> Tensor:
        return self.initial * self.gammas ** self.t

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = stack_losses(losses, self.task_names)
        total = (self.weights().to(stacked) * stacked).sum()
        if self.options.unit == "step":
            self.t += 1
        return total

    def epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        if self.options.unit == "epoch":
            self.t += 1

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.weights().tolist()))


__all__ = ["ScheduledOptions", "ScheduledWeights"]
