"""GradVac: gradient vaccine (Wang et al., ICLR 2021, Algorithm 1 / Eq. 8), via torchjd.

Like PCGrad, but instead of only removing conflicts, each pair of gradients is pushed towards an
adaptive target similarity: for task ``i`` and each other task ``j`` (random order), with
``φ_ij = cos(g_i, g_j)`` and the running target ``φ̂_ij`` (EMA with rate ``beta``), if
``φ_ij < φ̂_ij`` then

    g_i ← g_i + ‖g_i‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²)) · g_j,

and ``d = Σ_i g_i`` (whole-model granularity, on the Gramian). The targets ``φ̂`` are mtlkit's
state (saved in checkpoints); pairs with an absent task keep their target unchanged.

Options: ``beta`` (EMA rate, default 0.5 as in torchjd; the paper uses 1e-2), ``eps``.

Example:
    >>> import torch
    >>> b = GradVac(["a", "b"], GradVac.Options())
    >>> G = torch.tensor([[1.0, 0.0], [0.0, 1.0]])   # orthogonal: φ = 0 = φ̂ (initial), no change
    >>> b.weights(G, torch.tensor([True, True]))
    tensor([1., 1.])
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class GradVacOptions(TorchJDOptions):
    beta: float = Field(default=0.5, ge=0, le=1)
    eps: float = Field(default=1e-8, ge=0)


@BALANCERS.register("gradvac")
class GradVac(TorchJDBalancer):
    Options = GradVacOptions
    method = "gradvac"

    def __init__(self, task_names, options, loss_weights=None) -> None:
        super().__init__(task_names, options, loss_weights)
        self.targets = torch.zeros(len(self.task_names), len(self.task_names), dtype=torch.float64)  # φ̂, CPU

    def make(self, tasks):
        return self.aggregation.GradVacWeighting(beta=self.options.beta, eps=self.options.eps)

    def solve(self, gramian: Tensor, present: Tensor) -> Tensor:
        tasks = [int(i) for i in torch.nonzero(present).flatten()]
        engine = self.engine(tuple(tasks)) if tasks else None
        if engine is not None:
            # torchjd keeps φ̂ in `_phi_t`; mtlkit owns it so that absent tasks keep theirs.
            engine._phi_t = self.targets[tasks][:, tasks].clone()
            engine._state_key = (len(tasks), torch.float64)
        w = super().solve(gramian, present)
        if engine is not None:
            index = torch.tensor(tasks)
            self.targets[index[:, None], index[None, :]] = engine._phi_t
        return w

    def get_extra_state(self) -> Any:
        return {"targets": self.targets.clone()}

    def set_extra_state(self, state: Any) -> None:
        if state and "targets" in state:
            self.targets = state["targets"].to("cpu", torch.float64).clone()


__all__ = ["GradVac", "GradVacOptions"]
