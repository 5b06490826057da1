"""Row-wise AdaGrad: one accumulator per table row (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``).

The default optimiser for embedding tables in recommender systems (FBGEMM / TorchRec's
``EmbOptimType.EXACT_ROWWISE_ADAGRAD``; the "row-wise" variant of AdaGrad, Duchi et al., JMLR
2011, described for embeddings in Gupta et al., "Training Large-Scale Recommendation Models at
Scale", and in FBGEMM's ``split_embedding_codegen_lookup_rowwise_adagrad``). For every row ``r``
touched by the batch, with ``g_r`` its coalesced gradient row (``d`` values):

    G_r ← G_r + mean(g_r²) = G_r + (1/d) Σ_j g_rj²
    w_r ← w_r − lr · g_r / (√G_r + ε)

Untouched rows and their ``G_r`` do not change ("exact": no approximation of the sum over
steps). The state is one fp32 number per row — ``R·4`` bytes for ``R`` rows, against Adam's
``2·R·d·4`` — which is why it is the default. ``G`` starts at ``initial_accumulator`` (0, as in
FBGEMM).

Weight decay (``weight_decay``, default 0): L2, ``g_r ← g_r + λ·w_r``, applied to the touched rows
only — "lazy" decay, which shrinks frequent ids more than rare ones. Recommender tables usually
train without it (FBGEMM's default ``WeightDecayMode.NONE``); the dense parameters keep the
trainer's ``weight_decay``.

Options: ``lr`` (default 0.05), ``eps`` (1e-8), ``weight_decay`` (0), ``initial_accumulator`` (0).

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(4, 2))
    >>> opt = RowWiseAdagrad([w], lr=0.1)
    >>> w.grad = torch.sparse_coo_tensor([[1, 1]], torch.tensor([[3.0, 0.0], [1.0, 0.0]]), (4, 2), check_invariants=True)
    >>> opt.step()                         # g_1 = (4, 0): G_1 = 8, w_1 = −0.1·(4, 0)/√8
    >>> [round(v, 6) for v in w.data[1].tolist()], opt.state[w]["sum"].tolist()
    ([-0.141421, 0.0], [0.0, 8.0, 0.0, 0.0])
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mtlkit.optim.base import TABLE_OPTIMIZERS, TableOptimizer, TableOptimizerOptions
from mtlkit.optim.rounding import add_to_rows


class RowWiseAdagradOptions(TableOptimizerOptions):
    lr: float = Field(default=0.05, gt=0)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    initial_accumulator: float = Field(default=0.0, ge=0)


@TABLE_OPTIMIZERS.register("rowwise_adagrad")
class RowWiseAdagrad(TableOptimizer):
    Options = RowWiseAdagradOptions

    def init_state(self, param: Tensor, rows: int, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"sum": torch.full((rows,), group["initial_accumulator"], dtype=torch.float32, device=param.device)}

    def update(self, param: Tensor, ids: Tensor, grad: Tensor, local: Tensor, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        g = grad.float()
        if group["weight_decay"]:
            g = g + group["weight_decay"] * param.index_select(0, ids).float()
        accumulator = state["sum"]
        total = accumulator.index_select(0, local) + g.pow(2).mean(1)
        accumulator.index_copy_(0, local, total)
        scale = total.sqrt().add_(group["eps"]).reciprocal_().mul_(-group["lr"])
        add_to_rows(param, ids, g * scale.unsqueeze(1), state["step"])


__all__ = ["RowWiseAdagrad", "RowWiseAdagradOptions"]
