"""DC2VR ("DeConfounding Conversion Rate"): a low-rank intervention of the click tower on the conversion tower.

DC2VR has no paper: the formulation follows TorchEasyRec's implementation, ``tzrec/models/dc2vr.py``
and ``tzrec/modules/intervention.py`` (alibaba/TorchEasyRec PR #49, December 2024), which cites none.
There it is MMoE plus per-task towers plus an *intervention* module between the conversion task's
tower MLP and its output layer. With ``h_b`` the target (conversion) tower's output, ``h_s`` the
source (click) tower's output (several sources are concatenated) and ``sg`` the stop-gradient,

    out = h_b + (h_b · R_b − sg(h_s) · R_s) · R_bᵀ                        (as implemented)

where ``R_b`` (``d_b × r``) and ``R_s`` (``d_s × r``) have orthonormal columns and ``r`` is the
low rank (TorchEasyRec requires ``r < d_b`` and ``r < d_s``). ``R_b·R_bᵀ`` projects onto an
``r``-dimensional subspace of the conversion representation; inside it, the click tower's
(rotated) representation is subtracted, so the conversion head no longer re-learns what the click
tower explains. The source is held constant: the conversion loss does not train the click tower
through this path. Dropout (TorchEasyRec's default 0.1) follows, then the output layer. There is
no special loss: each task keeps its cross-entropy, and TorchEasyRec's optional task-space weights
(rows whose space label is positive weigh ``in_space_weight``, the others ``out_space_weight``,
normalised by their batch mean) are available as ``space``/``in_space_weight``/``out_space_weight``.

Orthonormal columns are kept by construction, as in TorchEasyRec, which wraps the projections in
``torch.nn.utils.parametrizations.orthogonal`` (for a tall matrix that is a product of Householder
reflections). We write the Householder product with plain tensor ops so that it exports to ONNX:
``R = H_1 ⋯ H_r · I[:, :r]`` with ``H_i = I − 2 v_i v_iᵀ / (v_iᵀ v_i)``.

In mtlkit: ``relations: {dc2vr: {task: cvr, sources: [ctr], rank: 2}}`` on any shared backbone
(TorchEasyRec's is MMoE: ``backbone: mmoe``).

Example:
    >>> import torch
    >>> base, source = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0, 5.0]])
    >>> rb, rs = torch.tensor([[1.0], [0.0], [0.0]]), torch.tensor([[0.0], [1.0]])  # rank 1
    >>> intervene(base, source, rb, rs).tolist()       # first coordinate: 1 + (1 − 5)·1
    [[-3.0, 2.0, 3.0]]
    >>> r = OrthonormalColumns(5, 2)()
    >>> torch.allclose(r.T @ r, torch.eye(2), atol=1e-6)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def intervene(base: Tensor, source: Tensor, base_map: Tensor, source_map: Tensor) -> Tensor:
    """``base + (base·R_b − sg(source)·R_s)·R_bᵀ``."""
    return base + (base @ base_map - source.detach() @ source_map) @ base_map.T


class OrthonormalColumns(nn.Module):
    """A ``rows × rank`` matrix with orthonormal columns: a product of ``rank`` Householder reflections."""

    eye: Tensor

    def __init__(self, rows: int, rank: int) -> None:
        super().__init__()
        if not 1 <= rank <= rows:
            raise ValueError(f"rank must be in [1, {rows}], got {rank}")
        self.reflectors = nn.Parameter(torch.randn(rows, rank))
        self.register_buffer("eye", torch.eye(rows, rank), persistent=False)

    def forward(self) -> Tensor:
        out: Tensor = self.eye
        for i in reversed(range(self.reflectors.shape[1])):
            v = self.reflectors[:, i : i + 1]
            out = out - (2.0 / (v * v).sum().clamp_min(1e-12)) * v @ (v.T @ out)
        return out


class Intervention(nn.Module):
    """TorchEasyRec's intervention: ``dropout(h_b + (h_b·R_b − sg(h_s)·R_s)·R_bᵀ)``."""

    def __init__(self, base_dim: int, source_dim: int, rank: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.base_map = OrthonormalColumns(base_dim, rank)
        self.source_map = OrthonormalColumns(source_dim, rank)
        self.dropout = nn.Dropout(dropout)

    def forward(self, base: Tensor, source: Tensor) -> Tensor:
        rb, rs = self.base_map(), self.source_map()
        return self.dropout(intervene(base, source.to(base.dtype), rb.to(base.dtype), rs.to(base.dtype)))


__all__ = ["Intervention", "OrthonormalColumns", "intervene"]
