"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, Eq. 7 and 10).

Each task has a learned log-variance ``s_k = log σ_k²`` (trained by the trainer's optimiser with
the model) and the combined loss is

    regression     (Gaussian likelihood, Eq. 7):  L_k / (2σ_k²) + log σ_k  =  ½·e^{−s_k}·L_k + ½·s_k
    classification (scaled softmax, Eq. 10):      L_k / σ_k²   + log σ_k  =    e^{−s_k}·L_k + ½·s_k

The kind of each task must be given, because it changes the weight: ``kinds`` maps a task to
``"regression"`` or ``"classification"`` (binary and multiclass tasks are classification), and
``default_kind`` covers the tasks not listed; with neither, building the balancer is an error
that names the tasks. At the optimum ``σ_k² = L_k`` (regression) or ``2·L_k``
(classification): noisy tasks get small weights. The terms of a task that is absent from the
step, or whose masked loss is exactly 0 (no labelled rows), are left out, so its ``s_k`` does not
drift. ``init`` is the initial ``s`` (0: σ = 1). Weights are multiplied by the task
``loss_weight`` ``λ_k``.

Example:
    >>> import torch
    >>> b = UncertaintyWeighting(["y", "click"], UncertaintyWeighting.Options(kinds={"y": "regression", "click": "classification"}))
    >>> b.combine({"y": torch.tensor(4.0), "click": torch.tensor(1.0)})     # s = 0: ½·4 + 1·1
    tensor(3., grad_fn=<SumBackward0>)
    >>> b.current_weights()
    {'y': 0.5, 'click': 1.0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from mtlkit.balancing.base import BALANCERS, BalancerOptions, LossWeighting, stack_losses
from mtlkit.errors import ConfigError

Kind = Literal["regression", "classification"]


class UncertaintyOptions(BalancerOptions):
    kinds: dict[str, Kind] = {}
    default_kind: Kind | None = None
    init: float = 0.0


@BALANCERS.register("uncertainty")
class UncertaintyWeighting(LossWeighting):
    Options = UncertaintyOptions
    options: UncertaintyOptions
    scale: Tensor
    lambdas: Tensor

    def __init__(self, task_names: Sequence[str], options: UncertaintyOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        unknown = sorted(set(options.kinds) - set(self.task_names))
        if unknown:
            raise ConfigError(f"balancer 'uncertainty': options.kinds names unknown tasks {unknown}")
        missing = [t for t in self.task_names if t not in options.kinds and options.default_kind is None]
        if missing:
            raise ConfigError(
                f"balancer 'uncertainty': the kind of tasks {missing} is unknown; set options.kinds "
                "(task: regression|classification) or options.default_kind"
            )
        kinds = [options.kinds.get(t, options.default_kind) for t in self.task_names]
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(options.init)))
        self.register_buffer("scale", torch.tensor([1.0 if k == "classification" else 0.5 for k in kinds]), persistent=False)
        self.register_buffer("lambdas", torch.tensor([self.loss_weights[t] for t in self.task_names]), persistent=False)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = stack_losses(losses, self.task_names)
        present = stacked != 0  # absent tasks are stacked as 0, as are fully masked ones
        s = self.log_vars.to(stacked)
        terms = self.scale.to(stacked) * torch.exp(-s) * self.lambdas.to(stacked) * stacked + 0.5 * s
        return torch.where(present, terms, torch.zeros_like(terms)).sum()

    def current_weights(self) -> dict[str, float]:
        w = self.lambdas * self.scale * torch.exp(-self.log_vars.detach())
        return dict(zip(self.task_names, w.tolist()))

    def sigmas(self) -> dict[str, float]:
        """``σ_k = exp(s_k / 2)`` per task (syncs)."""
        return dict(zip(self.task_names, torch.exp(self.log_vars.detach() / 2).tolist()))


__all__ = ["UncertaintyOptions", "UncertaintyWeighting"]
