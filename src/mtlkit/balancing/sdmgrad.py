"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (Xiao, Ban & Ji,
"Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms",
NeurIPS 2023, Algorithm 1, Eq. 7), via torchjd's ``SDMGradWeighting``.

SDMGrad keeps the update close to a preferred direction ``g₀ = J w̃`` (the mean gradient) while
avoiding conflicts, by projected SGD on the simplex (``n_iter`` steps, learning rate ``lr``,
momentum 0.5) on the weights with two independent batches ``ξ, ξ'``:

    w ← Π_Δ( w − lr · (J_ξ J_ξ'ᵀ)(w + λ w̃) )                                   (Eq. 7)
    d = J_ζᵀ (w + λ w̃) / (1 + λ)

where ``A = J_ξ J_ξ'ᵀ`` is first divided by the squared mean of ``√diag(A)`` (scale-free
``lr``, as in the official code and LibMTL). The batches are the last two steps' and the current
one (:mod:`mtlkit.balancing.stale_batches`). A task absent from the step has a zero row in every
Jacobian and weight 0 in the update. ``w`` and the saved Jacobians are checkpointed; sparse
embedding tables stay outside the Jacobian (``sparse_tables: outside``).

Options: ``lamda`` (λ, default 0.3), ``niter`` (20), ``lr`` (5.0, LibMTL's inner SGD rate),
``momentum`` (0.5): LibMTL 1.1.5's defaults. With two nearly opposite gradients that ``lr``
overshoots and the inner SGD ends on a vertex of the simplex (as in LibMTL); a smaller ``lr``
(0.5) converges to the min-norm point.

Example:
    >>> import torch
    >>> b = SDMGrad(["a", "b"], SDMGrad.Options(lamda=0.0, lr=0.5))
    >>> J = torch.tensor([[1.0, 0.0], [-1.0, 0.1]])          # nearly opposite gradients
    >>> d = b.aggregate(J, torch.tensor([True, True]))
    >>> bool((J @ d >= -1e-6).all())                          # λ = 0: MGDA-like, no conflict
    True
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


class SDMGradOptions(GradientOptions):
    lamda: float = Field(default=0.3, ge=0)
    niter: int = Field(default=20, ge=1)
    lr: float = Field(default=5.0, gt=0)
    momentum: float = Field(default=0.5, ge=0, lt=1)
    sparse_tables: Literal["outside"] = "outside"


@BALANCERS.register("sdmgrad")
class SDMGrad(GradientBalancer):
    Options = SDMGradOptions
    options: SDMGradOptions
    weighting: Any  # a torchjd weighting (no type information), kept out of the module tree

    def __init__(self, task_names: Sequence[str], options: SDMGradOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        aggregation = import_torchjd("sdmgrad")
        object.__setattr__(self, "weighting", aggregation.SDMGradWeighting(
            lr=options.lr, momentum=options.momentum, n_iter=options.niter, lambda_=options.lamda))
        self.history = JacobianHistory()

    def aggregate(self, jacobian: Tensor, present: Tensor) -> Tensor:
        weights = self.weighting(self.history.cross(jacobian))
        w = torch.where(present, weights.to(jacobian), torch.zeros_like(weights, dtype=jacobian.dtype))
        self.last_weights = w.detach()
        return w @ jacobian

    def get_extra_state(self) -> Any:
        return {"w": self.weighting._w, **self.history.state()}

    def set_extra_state(self, state: Any) -> None:
        self.history.load(state)
        w = state.get("w") if state else None
        self.weighting._w = w
        self.weighting._state_key = None if w is None else (len(self.task_names), w.dtype, w.device)


__all__ = ["SDMGrad", "SDMGradOptions"]
