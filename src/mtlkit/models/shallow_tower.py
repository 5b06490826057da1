"""The position-bias shallow tower of the YouTube ranker (Zhao et al., RecSys 2019, §4.2 and Fig. 3).

Users click items shown higher in the feed regardless of their relevance. The main model should
learn relevance, so selection-bias features (position, device) feed a separate small tower whose
logit is *added* to the main logit of the biased tasks while training:

    logit_train = logit_main(x) + logit_shallow(position, device)
    logit_serve = logit_main(x)

During training the position id is replaced by the "missing" id 0 for a random 10% of rows,
so the tower also learns the no-position case and does not let the main tower hide behind it.
At serving the position is unknown, and the shallow logit is left out (``serving="drop"``, the
paper's choice) or computed with the position treated as missing and the other bias features
kept (``serving="missing"``). Either way serving predictions never use the position.

The bias features come from the schema's ``bias`` section as ``inputs["bias"]``, a LongTensor
``(B, n_bias)`` of vocabulary ids (0 = missing); the position is bias feature ``position_index``.

Example:
    >>> import torch
    >>> tower = ShallowTower([11, 3], ["click"], ShallowTowerSpec(hidden=[4]))
    >>> bias = torch.tensor([[3, 1], [7, 2]])
    >>> tower(bias)["click"].shape
    torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mtlkit.nn import MLP


class ShallowTowerSpec(BaseModel):
    """``model.shallow_tower`` in the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tasks: list[str] | None = None  # default: every binary task
    hidden: list[int] = Field(default_factory=lambda: [16])
    embedding_dim: int = Field(default=4, ge=1)
    position_index: int = Field(default=0, ge=0)  # which bias feature is the position
    position_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    serving: Literal["drop", "missing"] = "drop"


class ShallowTower(nn.Module):
    def __init__(self, cardinalities: Sequence[int], tasks: Sequence[str], spec: ShallowTowerSpec) -> None:
        super().__init__()
        if not cardinalities:
            raise ValueError("the shallow tower needs bias features (features.bias: e.g. [position, device])")
        if spec.position_index >= len(cardinalities):
            raise ValueError(f"shallow_tower.position_index {spec.position_index} is not one of the {len(cardinalities)} bias features")
        self.spec = spec
        self.tasks = list(tasks)
        self.embeddings = nn.ModuleList(nn.Embedding(c, spec.embedding_dim) for c in cardinalities)
        self.mlp = MLP(len(cardinalities) * spec.embedding_dim, spec.hidden)
        self.output = nn.Linear(self.mlp.output_dim, len(self.tasks))

    def forward(self, bias: Tensor) -> dict[str, Tensor]:
        if self.training and self.spec.position_dropout > 0:
            drop = torch.rand(bias.shape[0], device=bias.device) < self.spec.position_dropout
            bias = bias.clone()
            bias[:, self.spec.position_index] = bias[:, self.spec.position_index].masked_fill(drop, 0)
        elif not self.training:
            bias = bias.clone()
            bias[:, self.spec.position_index] = 0
        x = torch.cat([emb(bias[:, i]) for i, emb in enumerate(self.embeddings)], dim=-1)
        logits = self.output(self.mlp(x))
        return {name: logits[:, i] for i, name in enumerate(self.tasks)}

    def applies(self) -> bool:
        """Whether the shallow logit is added in the current mode."""
        return self.training or self.spec.serving == "missing"


__all__ = ["ShallowTower", "ShallowTowerSpec"]
