"""FAMO: fast adaptive multitask optimisation (Liu et al., NeurIPS 2023, Algorithm 1).

FAMO decreases all task losses at an equal *rate* with O(1) cost per step — one backward, no
per-task gradients. With task logits ``ξ`` and ``z = softmax(ξ)``:

    model step:  minimise  Σ_k (z_k / c) · log(L_k − L_k*)  with  c = Σ_k z_k / (L_k − L_k*)
                 (so the gradient is  Σ_k (z_k / (c·(L_k − L_k*))) ∇L_k,  weights held constant)
    weight step: δ_k = log L_k(θ_t) − log L_k(θ_{t+1}),  ξ ← ξ − β·Adam(J_softmax(ξ)ᵀ δ + γ ξ)

``L_k*`` (``min_losses``) is a lower bound of each loss (0 by default), ``β`` the weight
learning rate ``lr`` (0.025) and ``γ`` the ``weight_decay`` (1e-5), as in the official code;
``ξ`` has its own Adam state inside the balancer (not the trainer's optimiser).

Deviation, amortised update: the paper re-evaluates the losses on the same batch after the step
to get ``L(θ_{t+1})``; a balancer sees only the losses of each step, so mtlkit uses the next
step's losses (next batch) as ``L(θ_{t+1})`` and updates ``ξ`` at the start of that step, which
needs no extra forward pass. ``δ`` is left at 0 for a task absent from either step. Losses are
multiplied by ``loss_weight`` first; absent or fully masked tasks (loss exactly 0) get weight 0.

Options: ``lr``, ``weight_decay``, ``min_losses`` (task → L_k*), ``eps`` (1e-8, added inside the log).

Example:
    >>> import torch
    >>> b = FAMO(["a", "b"], FAMO.Options())
    >>> total = b.combine({"a": torch.tensor(4.0), "b": torch.tensor(0.5)})   # z = (½, ½)
    >>> w = b.current_weights()        # ∝ 1/L_k: each task's gradient scaled by its own loss
    >>> round(w["a"], 4), round(w["b"], 4)
    (0.1111, 0.8889)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS, BalancerOptions, LossWeighting, stack_losses
from mtlkit.balancing.gradient import masked_softmax

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


class FAMOOptions(BalancerOptions):
    lr: float = Field(default=0.025, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    min_losses: dict[str, float] = {}
    eps: float = Field(default=1e-8, gt=0)


@BALANCERS.register("famo")
class FAMO(LossWeighting):
    Options = FAMOOptions
    options: FAMOOptions
    lambdas: Tensor
    floors: Tensor
    logits: Tensor
    adam_m: Tensor
    adam_v: Tensor
    adam_step: Tensor
    prev_log: Tensor
    prev_present: Tensor
    last_weights: Tensor

    def __init__(self, task_names: Sequence[str], options: FAMOOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        t = len(self.task_names)
        self.register_buffer("lambdas", torch.tensor([self.loss_weights[n] for n in self.task_names]), persistent=False)
        self.register_buffer("floors", torch.tensor([float(options.min_losses.get(n, 0.0)) for n in self.task_names]), persistent=False)
        self.register_buffer("logits", torch.zeros(t))
        self.register_buffer("adam_m", torch.zeros(t))
        self.register_buffer("adam_v", torch.zeros(t))
        self.register_buffer("adam_step", torch.zeros(()))
        self.register_buffer("prev_log", torch.zeros(t))
        self.register_buffer("prev_present", torch.zeros(t, dtype=torch.bool))
        self.register_buffer("last_weights", torch.zeros(t), persistent=False)

    @torch.no_grad()
    def _update_logits(self, log_now: Tensor, present: Tensor) -> None:
        valid = self.prev_present & present
        delta = torch.where(valid, self.prev_log - log_now, torch.zeros_like(log_now))
        z = torch.softmax(self.logits, 0)
        grad = z * (delta - (z * delta).sum()) + self.options.weight_decay * self.logits
        active = valid.any()
        step = self.adam_step + 1
        m = BETA1 * self.adam_m + (1 - BETA1) * grad
        v = BETA2 * self.adam_v + (1 - BETA2) * grad * grad
        update = self.options.lr * (m / (1 - BETA1 ** step)) / ((v / (1 - BETA2 ** step)).sqrt() + ADAM_EPS)
        self.logits.copy_(torch.where(active, self.logits - update, self.logits))
        self.adam_m.copy_(torch.where(active, m, self.adam_m))
        self.adam_v.copy_(torch.where(active, v, self.adam_v))
        self.adam_step.copy_(torch.where(active, step, self.adam_step))

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        raw = stack_losses(losses, self.task_names)
        present = raw != 0
        gap = (self.lambdas.to(raw) * raw - self.floors.to(raw)).clamp_min(0) + self.options.eps
        log_gap = torch.log(gap)
        self._update_logits(log_gap.detach().to(self.logits), present)
        z = masked_softmax(self.logits, present).to(raw)
        c = (z / gap.detach()).sum().clamp_min(1e-30)
        weights = (z / c).detach()
        self.prev_log.copy_(log_gap.detach())
        self.prev_present.copy_(present)
        self.last_weights = weights / gap.detach() * self.lambdas.to(raw)  # ∂loss/∂L_k, for logging
        return (weights * log_gap).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.last_weights.tolist()))


__all__ = ["FAMO", "FAMOOptions"]
