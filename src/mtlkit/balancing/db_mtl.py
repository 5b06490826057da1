"""DB-MTL: dual-balancing multi-task learning (Lin et al., "Dual-Balancing for Multi-Task
Learning", 2023, Eq. 3–6 / Algorithm 1).

Two balancing steps:

* loss scale — every task is trained on ``log L_k`` (Eq. 3): ``∇ log L_k = ∇L_k / L_k`` removes
  the losses' scale; towers get ``∇(λ_k log(L_k + ε))``;
* gradient magnitude — the shared gradients of the log-losses are smoothed by an EMA
  ``ĝ_k ← g_k + (β / t^σ)(ĝ_k − g_k)`` (Eq. 5; ``t`` the step) and rescaled to the largest norm
  (Eq. 6): ``d = Σ_k (max_j ‖ĝ_j‖ / ‖ĝ_k‖) ĝ_k``.

``β = 0.9`` and ``σ = 0.5`` as in the authors' code (LibMTL). A task absent from a step keeps
its EMA; one never seen contributes nothing. The EMA (``T × n``) is saved in checkpoints.

Options: ``beta``, ``beta_sigma``, ``eps`` (1e-8, inside the log).

Example:
    >>> import torch
    >>> b = DBMTL(["a", "b"], DBMTL.Options())
    >>> J = torch.tensor([[3.0, 0.0], [0.0, 1.0]])    # first step: ĝ = 0.1·g, rescaled to norm 0.3 each
    >>> b.aggregate(J, torch.tensor([True, True]))
    tensor([0.3000, 0.3000])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.gradient import GradientBalancer, GradientOptions


class DBMTLOptions(GradientOptions):
    beta: float = Field(default=0.9, ge=0, le=1)
    beta_sigma: float = Field(default=0.5, ge=0)
    eps: float = Field(default=1e-8, gt=0)


@BALANCERS.register("db_mtl")
class DBMTL(GradientBalancer):
    Options = DBMTLOptions
    options: DBMTLOptions
    step: Tensor

    def __init__(self, task_names: Sequence[str], options: DBMTLOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        self.ema: Tensor | None = None  # (T, n), created at the first step
        self.register_buffer("step", torch.zeros(()))

    def objective(self, loss: Tensor, index: int) -> Tensor:
        return self.lambdas[index].to(loss) * torch.log(loss + self.options.eps)

    def aggregate(self, jacobian: Tensor, present: Tensor) -> Tensor:
        if self.ema is None or self.ema.shape != jacobian.shape:
            self.ema = torch.zeros_like(jacobian)
        self.step += 1
        decay = self.options.beta / self.step.to(jacobian) ** self.options.beta_sigma
        smoothed = jacobian + decay * (self.ema - jacobian)
        self.ema = torch.where(present[:, None], smoothed, self.ema)
        norms = self.ema.norm(dim=1)
        scale = torch.where(norms > 0, norms.max() / (norms + 1e-8), torch.zeros_like(norms))
        self.last_weights = scale.detach()
        return scale @ self.ema

    def get_extra_state(self) -> Any:
        return {"ema": self.ema}

    def set_extra_state(self, state: Any) -> None:
        self.ema = (state or {}).get("ema")


__all__ = ["DBMTL", "DBMTLOptions"]
