"""MoDo: multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen, "Three-Way
Trade-Off in Multi-Objective Learning: Optimization, Generalization and Conflict-Avoidance",
NeurIPS 2023 / JMLR 2024, Algorithm 1), via torchjd's ``MoDoWeighting``.

MGDA's weights computed from one noisy batch are biased; MoDo takes one projected gradient step
on the weights using two independent batches ``ξ, ξ'`` and moves the model with a third ``ζ``:

    λ ← Π_Δ( λ − γ (J_ξ J_ξ'ᵀ λ + ρ λ) ),     d = J_ζᵀ λ                       (Algorithm 1)

The batches are the last two steps' and the current one
(:mod:`mtlkit.balancing.stale_batches`). A task absent from the step has a zero row in every
Jacobian (weight 0 in the update). ``λ`` and the two saved Jacobians are checkpointed; sparse
embedding tables stay outside the Jacobian (``sparse_tables: outside``).

Options: ``gamma`` (γ, default 0.001) and ``rho`` (ρ, 0.1): LibMTL 1.1.5's defaults.

Example:
    >>> import torch
    >>> b = MoDo(["a", "b"], MoDo.Options(gamma=0.1, rho=0.0))
    >>> J = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    >>> d = b.aggregate(J, torch.tensor([True, True]))     # first step: A = J Jᵀ = diag(1, 9)
    >>> [round(float(x), 3) for x in b.last_weights]       # Π_Δ((½, ½) − 0.1·(½, 9/2))
    [0.7, 0.3]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.gradient import GradientBalancer, GradientOptions
from mtlkit.balancing.stale_batches import JacobianHistory
from mtlkit.balancing.torchjd_backend import import_torchjd


class MoDoOptions(GradientOptions):
    gamma: float = Field(default=0.001, gt=0)
    rho: float = Field(default=0.1, ge=0)
    sparse_tables: Literal["outside"] = "outside"


@BALANCERS.register("modo")
class MoDo(GradientBalancer):
    Options = MoDoOptions
    options: MoDoOptions
    weighting: Any  # a torchjd weighting (no type information), kept out of the module tree

    def __init__(self, task_names: Sequence[str], options: MoDoOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        aggregation = import_torchjd("modo")
        object.__setattr__(self, "weighting", aggregation.MoDoWeighting(gamma=options.gamma, rho=options.rho))
        self.history = JacobianHistory()

    def aggregate(self, jacobian: Tensor, present: Tensor) -> Tensor:
        lambd = self.weighting(self.history.cross(jacobian))
        w = torch.where(present, lambd.to(jacobian), torch.zeros_like(lambd, dtype=jacobian.dtype))
        self.last_weights = w.detach()
        return w @ jacobian

    def get_extra_state(self) -> Any:
        return {"lambda": self.weighting._lambda, **self.history.state()}

    def set_extra_state(self, state: Any) -> None:
        self.history.load(state)
        lambd = state.get("lambda") if state else None
        self.weighting._lambda = lambd
        self.weighting._state_key = None if lambd is None else (len(self.task_names), lambd.dtype, lambd.device)


__all__ = ["MoDo", "MoDoOptions"]
