"""Row updates for tables stored in bfloat16: fp32 arithmetic, stochastic rounding on write-back.

A table kept in bf16 (``model.embedding_storage: bfloat16``) halves the weights' memory, but bf16
keeps 8 bits of mantissa: rounding ``w + Δ`` to the nearest bf16 drops every update smaller than
half a unit in the last place of ``w`` (``|Δ| < 2⁻⁹·|w|``), so rows that get many small steps stop
learning. Stochastic rounding (Gupta et al., "Deep Learning with Limited Numerical Precision",
ICML 2015, Eq. 5; what FBGEMM does for its fp16/bf16 table weights) rounds up with probability
equal to the dropped fraction, so the stored value is unbiased, ``E[round(x)] = x``, and small
updates survive on average.

The rounding bits are a counter-based hash of (step, row id, column): no random-generator state,
so a resumed run rounds exactly as the uninterrupted one (the optimisers checkpoint their step
count), and no two rows or steps share a draw. The optimiser state (AdaGrad's accumulators, Adam's
moments) stays fp32, and fp32 tables take the plain ``index_add_`` path, bit-identical to before.

Rounding: an fp32 value is sign, 8 exponent and 23 mantissa bits; bf16 is its upper 16 bits.
Adding a uniform 16-bit integer to the bit pattern and clearing the low 16 bits rounds the
magnitude up with probability (low bits) / 2¹⁶, which is the exact fractional distance to the
next bf16 value.

Example:
    >>> import torch
    >>> w = torch.zeros(2, 4, dtype=torch.bfloat16)
    >>> x = torch.full((2, 4), 1.0 + 2 ** -10)          # between the bf16 neighbours 1 and 1 + 2⁻⁷
    >>> means = [write_rows(w, torch.tensor([0, 1]), x, step) or w.float().mean().item() for step in range(2000)]
    >>> round(sum(means) / len(means), 4)               # unbiased: the mean lands on 1 + 2⁻¹⁰ ≈ 1.00098
    1.001
    >>> bool(torch.equal(stochastic_round(x, torch.tensor([0, 1]), 7), stochastic_round(x, torch.tensor([0, 1]), 7)))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Table storage dtypes a config may name, and their torch dtypes.
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# splitmix64's constants (Steele et al., "Fast splittable pseudorandom number generators",
# OOPSLA 2014) as signed int64: torch's int64 arithmetic wraps like the unsigned original.
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 values (torch's ``>>`` is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def rounding_bits(ids: Tensor, width: int, step: int) -> Tensor:
    """``(len(ids), width)`` uniform integers in ``[0, 2¹⁶)``, a hash of (step, id, column)."""
    key = ids.to(torch.int64).unsqueeze(1) * width + torch.arange(width, dtype=torch.int64, device=ids.device)
    x = key + torch.tensor(int(step) + 1, dtype=torch.int64, device=ids.device) * _GOLDEN  # wraps in int64
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    x = x ^ _shift_right(x, 31)
    return (_shift_right(x, 24) & 0xFFFF).to(torch.int32)


def stochastic_round(rows: Tensor, ids: Tensor, step: int) -> Tensor:
    """fp32 ``rows`` (one per id) rounded to bf16, up or down with the probability of their distance."""
    bits = rows.float().contiguous().view(torch.int32)
    rounded = (bits + rounding_bits(ids, rows.shape[1], step)) & -65536  # keep the upper 16 bits
    return rounded.view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


def write_rows(param: Tensor, ids: Tensor, rows: Tensor, step: int) -> None:
    """``param[ids] = rows``: exact for fp32 storage, stochastically rounded for bf16."""
    if param.dtype == torch.float32:
        param.index_copy_(0, ids, rows)
    else:
        param.index_copy_(0, ids, stochastic_round(rows, ids, step))


def add_to_rows(param: Tensor, ids: Tensor, delta: Tensor, step: int, alpha: float = 1.0) -> None:
    """``param[ids] += alpha · delta`` for unique ``ids``: fp32 storage adds in place (``index_add_``),
    bf16 storage adds in fp32 and writes back with stochastic rounding."""
    if param.dtype == torch.float32:
        param.index_add_(0, ids, delta.float(), alpha=alpha)
        return
    new = param.index_select(0, ids).float().add_(delta.float(), alpha=alpha)
    write_rows(param, ids, new, step)


__all__ = ["STORAGE_DTYPES", "add_to_rows", "rounding_bits", "stochastic_round", "write_rows"]
