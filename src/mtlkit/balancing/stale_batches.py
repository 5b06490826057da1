"""Independent mini-batches for double-sampling methods (MoDo, SDMGrad), from the last steps.

MoDo and SDMGrad update their task weights with ``A = J_ξ J_ξ'ᵀ``, the product of Jacobians of
two *independent* mini-batches, and move the model along a third, ``J_ζ``; LibMTL 1.1.5 draws
three batches per step. An mtlkit balancer sees one batch per step, so the two batches of ``A``
are the previous two steps' (``J_{t−2}``, ``J_{t−1}``, saved) and ``ζ`` is the current one:
independent batches, one and two steps stale, at no extra forward or backward. For the first two
steps (and after the Jacobian's width changes) ``A`` falls back to ``J_t J_tᵀ``.

Example:
    >>> import torch
    >>> h = JacobianHistory()
    >>> [tuple(h.cross(torch.full((2, 3), float(i))).diagonal().tolist()) for i in (1, 2, 3)]
    [(3.0, 3.0), (6.0, 6.0), (6.0, 6.0)]
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


class JacobianHistory:
    """The last two Jacobians; :meth:`cross` gives ``J_{t−2} J_{t−1}ᵀ`` and then records ``J_t``."""

    def __init__(self) -> None:
        self.previous: list[Tensor] = []

    def cross(self, jacobian: Tensor) -> Tensor:
        current = jacobian.detach()
        usable = [j.to(current) for j in self.previous if j.shape == current.shape]
        if len(usable) == 2:
            a = usable[0] @ usable[1].T
        elif len(usable) == 1:
            a = usable[0] @ current.T
        else:
            a = current @ current.T
        self.previous = [*usable[-1:], current.clone()]
        return a

    def state(self) -> Any:
        return {"previous": list(self.previous)}

    def load(self, state: Any) -> None:
        self.previous = list(state.get("previous", [])) if state else []


__all__ = ["JacobianHistory"]
