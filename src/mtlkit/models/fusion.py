"""Score fusion: one ranking score from the task predictions, computed by the model for serving.

A multi-objective ranker sorts by a single number. Two forms cover what production rankers use:

- ``weighted_sum``: ``score = Σ_k w_k · (c_k + ŷ_k)``
- ``product``:      ``score = Π_k (c_k + ŷ_k)^{w_k}``, e.g. ``pCTR^1 · (1 + watch)^0.5``

``ŷ_k`` is task k's prediction (probability for binary tasks, value for regression tasks),
``w_k`` its weight or power and ``c_k`` an offset (default 0). The product form is scale-free per
task (doubling every watch time multiplies every score by the same factor and keeps the order),
which is why it is popular when objectives live on different scales.

Example:
    >>> import torch
    >>> fusion = FusionSpec(kind="product", weights={"ctr": 1.0, "watch": 0.5}, offsets={"watch": 1.0})
    >>> fusion.score({"ctr": torch.tensor([0.1, 0.2]), "watch": torch.tensor([8.0, 0.0])})
    tensor([0.3000, 0.2000])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor


class FusionSpec(BaseModel):
    """``model.fusion`` in the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["weighted_sum", "product"] = "weighted_sum"
    weights: dict[str, float] = Field(min_length=1)
    offsets: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _offsets_name_weighted_tasks(self) -> FusionSpec:
        extra = sorted(set(self.offsets) - set(self.weights))
        if extra:
            raise ValueError(f"fusion.offsets names {extra[0]!r}, which has no weight")
        return self

    def score(self, predictions: Mapping[str, Tensor]) -> Tensor:
        terms = [(predictions[name] + self.offsets.get(name, 0.0), weight) for name, weight in self.weights.items()]
        if self.kind == "weighted_sum":
            return torch.stack([weight * value for value, weight in terms]).sum(0)
        # Π v^w through exp Σ w·log v would fail on v = 0; pow keeps 0^w = 0 for w > 0.
        return torch.stack([value.clamp_min(0) ** weight for value, weight in terms]).prod(0)


__all__ = ["FusionSpec"]
