"""STAR: star topology adaptive recommender for multi-scenario data (Sheng et al., "One Model to Serve
All: Star Topology Adaptive Recommender for Multi-Domain CTR Prediction", CIKM 2021).

A scenario column (``model.scenario``: a categorical feature such as the country or the device)
chooses, row by row, scenario-specific parameters that modulate shared ones:

* **Star topology FCN** (Eq. 1–2): every layer's weight is the element-wise product of a shared
  and a scenario-specific weight, its bias their sum,
  ``out_p = φ((W ⊙ W_p)ᵀ in + b + b_p)``. ``W_p`` starts at all ones and ``b_p`` at zero, so
  training starts from the shared network. All scenarios' products are one einsum, each row then
  takes its own.
* **Partitioned normalisation** (Eq. 3–4), ``partitioned_norm``: before the FCN,
  ``z' = (γ · γ_p) (z − E_p) / √(Var_p + ε) + (β + β_p)``, with the statistics of the row's
  scenario (in a mixed training batch, the batch statistics of that scenario's rows; at
  evaluation, the scenario's moving averages).
* **Auxiliary network** (§4.4), ``auxiliary``: a small MLP on the scenario embedding and the input,
  whose output (one value per task) joins the representation, so the task's output layer adds it
  to the logit (with a learned weight: the paper adds it with weight 1).

**Unseen scenarios.** A scenario value unseen in training is id 0 (the vocabulary's unknown/rare
id); it gets the *shared weights only*: ``W_0 = 1``, ``b_0 = 0``, ``γ_0 = 1``, ``β_0 = 0``, fixed,
and the normalisation statistics of all rows (updated by every training batch). Training rows with
id 0 (rare values) train only the shared weights. STAR is a shared bottom: every task reads the
same representation; towers are the model's.

Example:
    >>> import torch
    >>> from mtlkit.models.layout import InputLayout
    >>> layout = InputLayout(["country", "item"], [4, 9], embedding_dim=2, numeric_dim=3, scenario="country")
    >>> bb = STAR.create(layout.input_dim, ["ctr", "cvr"], STAR.Options(hidden=[8, 4]), layout)
    >>> inputs = {"categorical": torch.tensor([[1, 5], [0, 2]])}
    >>> {k: v.shape for k, v in bb.run(torch.randn(2, 7), inputs).items()}   # 4 units + 2 auxiliary values
    {'ctr': torch.Size([2, 6]), 'cvr': torch.Size([2, 6])}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.models.layout import InputLayout
from mtlkit.nn import MLP
from mtlkit.nn.experts import EXPERT_ACTIVATIONS


class STAROptions(BackboneOptions):
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    partitioned_norm: bool = True
    auxiliary: list[int] = Field(default_factory=lambda: [32], description="the auxiliary network's hidden widths; [] to drop it")
    scenario_dim: int = Field(default=8, ge=1, description="width of the auxiliary network's scenario embedding")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    momentum: float = Field(default=0.1, gt=0.0, le=1.0, description="partitioned norm: moving-average rate")


def one_hot(scenario: Tensor, n: int) -> Tensor:
    return (scenario.unsqueeze(1) == torch.arange(n, device=scenario.device)).to(torch.float32)


class PartitionedNorm(nn.Module):
    """Eq. 3–4 over ``n`` scenario slots; slot 0 (unseen) has fixed γ_0 = 1, β_0 = 0 and all-row statistics."""

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, n: int, width: int, momentum: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.n, self.momentum, self.eps = n, momentum, eps
        self.gamma = nn.Parameter(torch.ones(width))
        self.beta = nn.Parameter(torch.zeros(width))
        self.gamma_p = nn.Parameter(torch.ones(n - 1, width))
        self.beta_p = nn.Parameter(torch.zeros(n - 1, width))
        self.register_buffer("running_mean", torch.zeros(n, width))
        self.register_buffer("running_var", torch.ones(n, width))

    def forward(self, z: Tensor, scenario: Tensor) -> Tensor:
        gamma_p = torch.cat([self.gamma_p.new_ones(1, self.gamma_p.shape[1]), self.gamma_p])[scenario]
        beta_p = torch.cat([self.beta_p.new_zeros(1, self.beta_p.shape[1]), self.beta_p])[scenario]
        if self.training:
            onehot = one_hot(scenario, self.n)  # (B, n)
            onehot[:, 0] = 1.0  # slot 0: the statistics of all rows
            counts = onehot.sum(0)  # (n,)
            safe = counts.clamp_min(1.0).unsqueeze(1)
            mean = onehot.t() @ z / safe  # (n, d)
            var = onehot.t() @ (z * z) / safe - mean * mean
            var = var.clamp_min(0.0)
            with torch.no_grad():
                seen = (counts > 0).unsqueeze(1)
                unbiased = var * (counts / (counts - 1).clamp_min(1.0)).unsqueeze(1)
                self.running_mean.copy_(torch.where(seen, (1 - self.momentum) * self.running_mean + self.momentum * mean, self.running_mean))
                self.running_var.copy_(torch.where(seen, (1 - self.momentum) * self.running_var + self.momentum * unbiased, self.running_var))
            own = torch.where(scenario == 0, torch.zeros_like(scenario), scenario)
            row_mean, row_var = mean[own], var[own]
        else:
            row_mean, row_var = self.running_mean[scenario], self.running_var[scenario]
        return (self.gamma * gamma_p) * (z - row_mean) / torch.sqrt(row_var + self.eps) + (self.beta + beta_p)


class StarLinear(nn.Module):
    """``(W ⊙ W_p)ᵀ x + b + b_p`` for the row's scenario ``p``; slot 0 is the shared layer alone."""

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.shared = nn.Linear(in_features, out_features)
        self.weight_p = nn.Parameter(torch.ones(n - 1, in_features, out_features))
        self.bias_p = nn.Parameter(torch.zeros(n - 1, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.shared.weight, -bound, bound)

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        weight = torch.cat([self.weight_p.new_ones(1, *self.weight_p.shape[1:]), self.weight_p])  # (n, in, out)
        bias = torch.cat([self.bias_p.new_zeros(1, self.bias_p.shape[1]), self.bias_p])
        per_scenario = torch.einsum("bi,pio->bpo", x, weight * self.shared.weight.t())  # (B, n, out)
        index = scenario.view(-1, 1, 1).expand(-1, 1, per_scenario.shape[2])
        return per_scenario.gather(1, index).squeeze(1) + self.shared.bias + bias[scenario]


@BACKBONES.register("star")
class STAR(Backbone):
    Options = STAROptions
    options: STAROptions
    needs_scenario = True

    def __init__(self, input_dim: int, task_names: Sequence[str], options: STAROptions, layout: InputLayout | None = None) -> None:
        super().__init__(input_dim, task_names, options)
        if layout is None or layout.scenario is None:
            raise ConfigError("model.scenario: backbone star needs a scenario column (a categorical feature, e.g. the country)")
        self.scenario_field = layout.index(layout.scenario, "model.scenario")
        n = int(layout.cardinalities[self.scenario_field])
        if n < 2:
            raise ConfigError(f"model.scenario: {layout.scenario!r} has no values seen in training")
        self.n_scenarios = n
        self.norm = PartitionedNorm(n, input_dim, options.momentum) if options.partitioned_norm else None
        widths = [input_dim, *options.hidden]
        self.layers = nn.ModuleList(StarLinear(n, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = EXPERT_ACTIVATIONS[options.activation]()
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.auxiliary: nn.Module | None = None
        if options.auxiliary:
            self.scenario_embedding = nn.Embedding(n, options.scenario_dim)
            aux = MLP(options.scenario_dim + input_dim, options.auxiliary, options.activation)
            self.auxiliary = nn.Sequential(aux, nn.Linear(aux.output_dim, len(self.task_names)))
        self.output_dim = widths[-1] + (len(self.task_names) if self.auxiliary is not None else 0)

    @classmethod
    def create(cls, input_dim: int, task_names: Sequence[str], options: STAROptions, layout: InputLayout) -> STAR:  # type: ignore[override]
        return cls(input_dim, task_names, options, layout)

    def scenario_ids(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return inputs["categorical"][:, self.scenario_field]

    def run(self, x: Tensor, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.forward(x, self.scenario_ids(inputs))

    def forward(self, x: Tensor, scenario: Tensor | None = None) -> dict[str, Tensor]:
        """``scenario``: ``(B,)`` ids of the scenario field (0 = unseen: shared weights only; None: all unseen)."""
        if scenario is None:
            scenario = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        h = self.norm(x, scenario) if self.norm is not None else x
        for layer in self.layers:
            h = self.dropout(self.activation(layer(h, scenario)))
        if self.auxiliary is not None:
            aux = self.auxiliary(torch.cat([self.scenario_embedding(scenario), x], dim=1))  # (B, T)
            return {t: torch.cat([h, aux], dim=1) for t in self.task_names}
        return {t: h for t in self.task_names}


__all__ = ["STAR", "STAROptions", "PartitionedNorm", "StarLinear"]
