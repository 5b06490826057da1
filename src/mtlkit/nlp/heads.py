"""Building blocks every task kind's head and loss use.

- :class:`PooledHead`: dropout → optional MLP (``head.hidden``) → linear, on the pooled vector
  (MT-DNN's task-specific layer: Liu et al. 2019, §3.1, ``softmax(W_t · x)`` on [CLS]).
- :func:`masked_mean`: the mean of per-row losses over the rows that count (``mask`` and
  ``weight``); exactly 0, with zero gradient, when no row counts.
- :data:`PAD_LOGIT`: the value that pads scores which must never win an argmax (padded
  candidates, positions past a trimmed sequence).

Example:
    >>> import torch
    >>> head = PooledHead(8, 3, HeadOptions(hidden=[4], dropout=0.0))
    >>> head(torch.zeros(2, 5, 8), torch.zeros(2, 8), {}).shape
    torch.Size([2, 3])
    >>> masked_mean(torch.tensor([1.0, 3.0]), None, torch.tensor([False, False])).item()
    0.0
    >>> masked_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]), None).item()   # weighted
    2.5
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from mtlkit.nlp.base import HeadOptions, NLPHead
from mtlkit.nn import MLP

PAD_LOGIT = -1e4  # finite: exp() underflows to 0 in float32 and half precision alike, never NaN


class PooledHead(NLPHead):
    """``forward(sequence, pooled, inputs)`` → ``(B, out)`` (``(B,)`` when ``out == 1``)."""

    def __init__(self, hidden_size: int, out: int, options: HeadOptions) -> None:
        super().__init__()
        self.dropout = nn.Dropout(options.dropout)
        self.mlp = MLP(hidden_size, options.hidden, activation="gelu", dropout=options.dropout)
        self.output = nn.Linear(self.mlp.output_dim, out)
        self.squeeze = out == 1

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        out = self.output(self.mlp(self.dropout(pooled)))
        return out.squeeze(-1) if self.squeeze else out


def masked_mean(values: Tensor, weight: Tensor | None, mask: Tensor | None) -> Tensor:
    """``Σ w_i·v_i / Σ w_i`` over rows with ``mask``; 0 (not NaN) when the sum of weights is 0."""
    w = values.new_ones(values.shape) if weight is None else weight.to(values.dtype)
    if mask is not None:
        w = w * mask.to(values.dtype)
    # where(), not w·v: a masked row may hold inf/NaN (e.g. an invalid target) that 0·v would keep.
    total = (w * values.where(w > 0, values.new_zeros(()))).sum()
    return total / w.sum().clamp_min(1e-12)


def safe_targets(target: Tensor, mask: Tensor | None, fill: Any = 0) -> Tensor:
    """Targets with rows outside ``mask`` replaced by ``fill``, so a loss never indexes with -1."""
    return target if mask is None else target.where(mask, target.new_full((), fill))


__all__ = ["PAD_LOGIT", "PooledHead", "masked_mean", "safe_targets"]
