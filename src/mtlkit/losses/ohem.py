"""OHEM: online hard example mining (Shrivastava, Gupta & Girshick, "Training Region-based Object
Detectors with Online Hard Example Mining", CVPR 2016, §4).

Each step keeps only the hardest rows of the batch: the per-row loss of ``base`` (bce, focal,
mse, huber, cross_entropy; with ``base_options``) is computed for every row that counts, the
``keep_ratio`` share with the largest loss (at least ``min_kept``) is kept, and the loss is their
weighted mean. The selection carries no gradient. ``loss: ohem`` on any task kind its ``base`` fits.

Example:
    >>> import torch
    >>> x, y, w = torch.tensor([3.0, -3.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.ones(4)
    >>> round(float(ohem(x, y, w, None, base="bce", keep_ratio=0.25)), 4)   # only the worst row: −log σ(−3)
    3.0486
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from mtlkit.losses.registry import BATCH_LOSSES, LOSS_OPTIONS, LOSSES, validate_loss_options


class OHEMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    base: Literal["bce", "focal", "mse", "huber", "cross_entropy"] = "bce"
    base_options: dict[str, Any] = Field(default_factory=dict)
    keep_ratio: float = Field(default=0.7, gt=0.0, le=1.0)
    min_kept: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_base(self) -> OHEMOptions:
        object.__setattr__(self, "base_options", validate_loss_options(self.base, dict(self.base_options)))
        return self


@LOSSES.register("ohem")
def ohem(logits: Tensor, target: Tensor, weight: Tensor, group: Tensor | None = None, base: str = "bce",
         base_options: dict[str, Any] | None = None, keep_ratio: float = 0.7, min_kept: int = 1) -> Tensor:
    """Weighted mean of the base loss over the hardest ``keep_ratio`` of the rows that count."""
    row = LOSSES.get(base)(logits, target, **(base_options or {}))
    counts = weight > 0
    k = torch.maximum(torch.ceil(keep_ratio * counts.sum()), torch.tensor(float(min_kept), device=row.device))
    ranked = torch.where(counts, row.detach(), torch.full_like(row, -torch.inf))
    order = torch.argsort(ranked, descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    keep = counts & (rank < k)
    kept_weight = weight * keep.to(weight.dtype)
    return (row * kept_weight).sum() / kept_weight.sum().clamp_min(1e-12)


LOSS_OPTIONS["ohem"] = OHEMOptions
BATCH_LOSSES.add("ohem")

__all__ = ["OHEMOptions", "ohem"]
