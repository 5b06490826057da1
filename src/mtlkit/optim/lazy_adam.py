"""Lazy Adam: Adam moments per row, updated only when the row is touched (``torch.optim.SparseAdam``).

Adam (Kingma & Ba, ICLR 2015, Algorithm 1) restricted to the rows ``I`` a batch touched, with
the arithmetic of ``torch.optim.SparseAdam`` (PyTorch's ``_functional.sparse_adam``). With ``t``
the number of steps this weight had a gradient and ``g_r`` the coalesced gradient row of ``r ∈ I``:

    m_r ← m_r + (1 − β₁)(g_r − m_r)          v_r ← v_r + (1 − β₂)(g_r² − v_r)
    w_r ← w_r − lr · √(1 − β₂ᵗ)/(1 − β₁ᵗ) · m_r / (√v_r + ε)

How it differs from dense Adam on the same table:

- an untouched row keeps its moments and its weight. Dense Adam decays every row's moments
  every step and keeps moving a row that was touched recently (its ``m_r`` ≠ 0) for many steps
  with a zero gradient; lazy Adam moves a row only in the steps that touch it;
- the bias correction uses the weight's global step ``t``, not the number of times row ``r``
  was touched, so a rare row's first update is smaller than dense Adam's first update would be
  (``m_r`` after one touch is ``(1 − β₁)·g_r``, corrected by ``1/(1 − β₁ᵗ)`` with a large ``t``);
- ``ε`` is added to ``√v_r`` before the ``√(1 − β₂ᵗ)`` correction, as SparseAdam does (dense
  Adam adds it after);
- no weight decay (SparseAdam has none).

Memory: two moments of the table's shape, ``2·R·d·4`` bytes (three times the weights in all):
lazy Adam saves the dense Adam's per-step time, not its memory (row-wise AdaGrad saves both).

Options: ``lr`` (default 1e-3), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8).

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(3, 2))
    >>> opt = LazyAdam([w], lr=0.1)
    >>> w.grad = torch.sparse_coo_tensor([[2]], torch.tensor([[1.0, -1.0]]), (3, 2), check_invariants=True)
    >>> opt.step()                          # first step: a signed step of ≈ lr
    >>> [round(v, 4) for v in w.data[2].tolist()], w.data[:2].abs().sum().item()
    ([-0.1, 0.1], 0.0)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.optim.base import TABLE_OPTIMIZERS, TableOptimizer, TableOptimizerOptions
from mtlkit.optim.rounding import add_to_rows


class LazyAdamOptions(TableOptimizerOptions):
    lr: float = Field(default=1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)


@TABLE_OPTIMIZERS.register("lazy_adam")
class LazyAdam(TableOptimizer):
    Options = LazyAdamOptions

    def init_state(self, param: Tensor, rows: int, group: dict[str, Any]) -> dict[str, Tensor]:
        shape = (rows, param.shape[1])
        return {"exp_avg": torch.zeros(shape, dtype=torch.float32, device=param.device),  # fp32 for bf16 tables too
                "exp_avg_sq": torch.zeros(shape, dtype=torch.float32, device=param.device)}

    def update(self, param: Tensor, ids: Tensor, grad: Tensor, local: Tensor, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        grad = grad.float()
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # The operations, and their order, of torch.optim._functional.sparse_adam (bit-identical).
        old_avg = exp_avg.index_select(0, local)
        avg_update = grad.sub(old_avg).mul_(1 - beta1)
        exp_avg.index_add_(0, local, avg_update)
        old_sq = exp_avg_sq.index_select(0, local)
        sq_update = grad.pow(2).sub_(old_sq).mul_(1 - beta2)
        exp_avg_sq.index_add_(0, local, sq_update)
        numer = avg_update.add_(old_avg)
        denom = sq_update.add_(old_sq).sqrt_().add_(group["eps"])
        step = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        add_to_rows(param, ids, -step_size * numer.div_(denom), step)


__all__ = ["LazyAdam", "LazyAdamOptions"]
