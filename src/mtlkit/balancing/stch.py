"""STCH: smooth Tchebycheff scalarisation (Lin, Zhang, Yang, Zhang & Zhang, "Smooth Tchebycheff
Scalarization for Multi-Objective Optimization", ICML 2024, §3, the smooth Tchebycheff function).

The Tchebycheff scalarisation ``max_k λ_k (f_k − z_k*)`` is non-smooth; STCH replaces the max by
its log-sum-exp smoothing with temperature ``μ``:

    g_μ(θ) = μ · log Σ_k exp( λ_k (f_k(θ) − z_k*) / μ )                     (smooth Tchebycheff)

As in the official multi-task code and LibMTL 1.1.5, the objectives are normalised log losses,
``f_k − z_k* = log(L_k / L̄_k)``, with the nadir point ``L̄_k`` = task ``k``'s mean training loss
over the last warm-up epoch; during the warm-up epochs the objective is ``Σ_k log L_k``. The
combined loss is ``T · g_μ`` (LibMTL's scaling, so that the gradient has the size of a sum over
tasks). ``λ_k`` is the task's ``loss_weight`` (1 by default). A task absent from the step (or
with no labelled rows: loss exactly 0) is left out of the sum; a step with no task is 0.

Options: ``mu`` (μ, default 1.0; small μ approaches the max), ``warmup_epochs`` (≥ 1, default 1),
``eps`` (1e-20, added inside the log as LibMTL does).

Example:
    >>> import torch
    >>> b = STCH(["a", "b"], STCH.Options(mu=0.1))
    >>> b.epoch_end(0, {"a": 2.0, "b": 0.5})                    # nadir = (2, 0.5)
    >>> a, c = torch.tensor(4.0, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    >>> b.combine({"a": a, "b": c}).backward()                 # a is 2x its nadir, b at its nadir
    >>> round(float(a.grad * 4.0), 2), round(float(c.grad * 0.5), 2)   # ≈ T·max: all weight on a
    (2.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS, BalancerOptions, LossWeighting, stack_losses


class STCHOptions(BalancerOptions):
    mu: float = Field(default=1.0, gt=0)
    warmup_epochs: int = Field(default=1, ge=1)
    eps: float = Field(default=1e-20, gt=0)


@BALANCERS.register("stch")
class STCH(LossWeighting):
    Options = STCHOptions
    options: STCHOptions
    lambdas: Tensor
    nadir: Tensor
    epochs_seen: Tensor
    last_weights: Tensor

    def __init__(self, task_names: Sequence[str], options: STCHOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        t = len(self.task_names)
        self.register_buffer("lambdas", torch.tensor([self.loss_weights[n] for n in self.task_names]), persistent=False)
        self.register_buffer("nadir", torch.ones(t, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_weights", torch.ones(t), persistent=False)

    def epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        self.epochs_seen += 1
        if int(self.epochs_seen) == self.options.warmup_epochs:
            mean = torch.tensor([float(mean_losses.get(n, 0.0)) for n in self.task_names], dtype=torch.float64)
            # A task never seen in the warm-up keeps nadir 1 (its raw log loss).
            self.nadir.copy_(torch.where(mean > 0, mean, torch.ones_like(mean)).to(self.nadir))

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        raw = stack_losses(losses, self.task_names)
        present = raw != 0
        t = len(self.task_names)
        safe = torch.where(present, raw, torch.ones_like(raw))  # no log(0) on either branch
        # Both branches are computed and one is selected on the device: no host sync per step.
        warm = torch.where(present, torch.log(safe + self.options.eps), torch.zeros_like(raw)).sum()
        scaled = self.lambdas.to(raw) * torch.log(safe / self.nadir.to(raw) + self.options.eps) / self.options.mu
        scaled = torch.where(present, scaled, torch.full_like(scaled, -1e30))  # finite: absent tasks get softmax 0
        smooth = torch.where(present.any(), t * self.options.mu * torch.logsumexp(scaled, 0), torch.zeros_like(warm))
        in_warmup = self.epochs_seen.to(raw.device) < self.options.warmup_epochs
        share = torch.where(in_warmup, present.to(raw), t * torch.softmax(scaled, 0) * self.lambdas.to(raw))
        self.last_weights = (share / safe).detach()
        return torch.where(in_warmup, warm, smooth)

    def current_weights(self) -> dict[str, float]:
        """∂(combined loss)/∂L_k of the last step."""
        return dict(zip(self.task_names, self.last_weights.tolist()))


__all__ = ["STCH", "STCHOptions"]
