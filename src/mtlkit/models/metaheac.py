"""MetaHeac: meta hybrid experts and critics (Zhu et al., "Learning to Expand Audience via Meta Hybrid
Experts and Critics for Recommendation and Advertising", KDD 2021), as a multi-scenario backbone.

In the paper a *task* is one look-alike campaign; here it is one scenario (``model.scenario``: the
country, the device) of each of the model's tasks (click, conversion). Every parameter is shared
except a small scenario embedding ``e_p`` and a task embedding ``e_t``; what is specific to a
scenario is only how it *mixes* the shared networks:

* **Task representation** (the gates' input, as in the authors' code): the scenario and task
  embeddings and the mean of the row's categorical field embeddings (the scenario field left out),
  ``z = [e_p ; e_t ; (1/F) Σ_f v_f(x)]``.
* **Hybrid experts**: ``K`` shared expert MLPs read the encoded input; a gate on ``z`` mixes them,
  ``h = Σ_k a_k E_k(x)``, ``a = softmax(W₂ ReLU(W₁ z + b₁) + b₂)``.
* **Critics**: ``C`` shared critic networks read ``h``; a second gate on ``z`` mixes them,
  ``b = softmax(G(z))``. The paper mixes the critics' probabilities, ``ŷ = Σ_c b_c σ(D_c(h))``.
  Here the critics' last hidden layers are mixed, ``r = Σ_c b_c D_c(h)``, and the task's output
  layer (the model's head) reads ``r``: ``logit = Σ_c b_c (w · D_c(h) + β)``, i.e. the critics'
  *logits* are mixed and σ is taken after the sum. Heads own the output layer so that every task
  kind (binary, regression, multiclass), task relations (ESMM, AITM) and calibration keep reading
  logits.

**Left out: the meta-learning** (the paper's offline stage trains with MAML: per campaign, one
gradient step on a support set, then the query-set loss of the adapted weights updates the
general model; its online stage fine-tunes on a new campaign's seed set). It does not fit the
trainer's contract: one forward, task losses, a balancer, one backward, optimiser steps that
include row-wise sparse updates of the embedding tables. MAML needs a second-order backward through
an inner update of every parameter, embedding tables included, per scenario and step. Here the
model is trained jointly on all scenarios' rows (no meta-learning: the architecture alone). The
online stage (fine-tuning on a new scenario's seed set) is not provided either: a scenario unseen in
training is served with the shared parameters only, as below.

**Unseen scenarios.** A value unseen in training (id 0) has ``e_0 = 0``, fixed: its gates read
only the task embedding and the row's features, and every network it uses is shared. Training rows
with id 0 (rare values) train only shared parameters.

Example:
    >>> import torch
    >>> from mtlkit.models.layout import InputLayout
    >>> layout = InputLayout(["country", "item"], [4, 9], embedding_dim=2, numeric_dim=3, scenario="country")
    >>> bb = MetaHeac.create(layout.input_dim, ["ctr", "cvr"], MetaHeac.Options(experts=3, expert_hidden=[8],
    ...                      critics=2, critic_hidden=[4]), layout)
    >>> inputs = {"categorical": torch.tensor([[1, 5], [0, 2]])}
    >>> {k: v.shape for k, v in bb.run(torch.randn(2, 7), inputs).items()}
    {'ctr': torch.Size([2, 4]), 'cvr': torch.Size([2, 4])}
    >>> {k: tuple(v.shape) for k, v in bb.gate_weights_on(torch.randn(2, 7), inputs).items()}
    {'experts/ctr': (2, 3), 'experts/cvr': (2, 3), 'critics/ctr': (2, 2), 'critics/cvr': (2, 2)}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.models.layout import InputLayout
from mtlkit.nn.experts import ExpertBank


class MetaHeacOptions(BackboneOptions):
    experts: int = Field(default=4, ge=1, description="K shared experts")
    expert_hidden: list[int] = Field(default_factory=lambda: [64], min_length=1)
    critics: int = Field(default=3, ge=1, description="C shared critics")
    critic_hidden: list[int] = Field(default_factory=lambda: [32], min_length=1, description="each critic's widths")
    gate_hidden: int = Field(default=32, ge=1, description="hidden width of the expert and critic gates")
    scenario_dim: int = Field(default=8, ge=1, description="width of the scenario embedding e_p")
    task_dim: int = Field(default=8, ge=1, description="width of the task embedding e_t")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = Field(default=False, description="BatchNorm after each expert and critic layer")


class ScenarioGate(nn.Module):
    """``softmax(W₂ ReLU(W₁ z + b₁) + b₂)`` on ``z = [e_p ; e_t ; m]``, for every row and task at once.

    ``W₁ z`` is split into a per-row part (scenario embedding and mean field embedding) and a
    per-task part, added by broadcasting: ``(B, H) + (T, H) → (B, T, H)``.
    """

    def __init__(self, row_dim: int, task_dim: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.row = nn.Linear(row_dim, hidden)
        self.task = nn.Linear(task_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, row: Tensor, task: Tensor) -> Tensor:
        """``row`` ``(B, row_dim)``, ``task`` ``(T, task_dim)`` → ``(B, T, n_out)`` weights summing to one."""
        hidden = torch.relu(self.row(row).unsqueeze(1) + self.task(task).unsqueeze(0))
        return torch.softmax(self.out(hidden), dim=-1)


@BACKBONES.register("metaheac")
class MetaHeac(Backbone):
    Options = MetaHeacOptions
    options: MetaHeacOptions
    needs_scenario = True

    def __init__(self, input_dim: int, task_names: Sequence[str], options: MetaHeacOptions, layout: InputLayout | None = None) -> None:
        super().__init__(input_dim, task_names, options)
        if layout is None or layout.scenario is None:
            raise ConfigError("model.scenario: backbone metaheac needs a scenario column (a categorical feature, e.g. the country)")
        self.scenario_field = layout.index(layout.scenario, "model.scenario")
        n = int(layout.cardinalities[self.scenario_field])
        if n < 2:
            raise ConfigError(f"model.scenario: {layout.scenario!r} has no values seen in training")
        self.n_scenarios = n
        # The row's other categorical fields (first embedding copy), averaged into the gates' input:
        # (all fields' sum − the scenario field's) / (F − 1), from contiguous slices.
        self.embedding_dim = layout.embedding_dim
        self.fields = layout.copy_columns(0)
        self.own = layout.field_columns(layout.scenario, key="model.scenario")
        self.n_others = layout.n_fields - 1
        # e_p for the seen scenarios 1..n-1; e_0 (unseen) is a fixed zero row.
        self.scenario_embedding = nn.Parameter(torch.randn(n - 1, options.scenario_dim))
        self.task_embedding = nn.Parameter(torch.randn(len(self.task_names), options.task_dim))
        row_dim = options.scenario_dim + layout.embedding_dim
        self.experts = ExpertBank(options.experts, input_dim, options.expert_hidden, options.activation, options.dropout,
                                  options.batch_norm)
        self.critics = ExpertBank(options.critics, self.experts.output_dim, options.critic_hidden, options.activation,
                                  options.dropout, options.batch_norm)
        self.expert_gate = ScenarioGate(row_dim, options.task_dim, options.gate_hidden, options.experts)
        self.critic_gate = ScenarioGate(row_dim, options.task_dim, options.gate_hidden, options.critics)
        self.output_dim = self.critics.output_dim

    @classmethod
    def create(cls, input_dim: int, task_names: Sequence[str], options: MetaHeacOptions, layout: InputLayout) -> MetaHeac:  # type: ignore[override]
        return cls(input_dim, task_names, options, layout)

    def scenario_ids(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return inputs["categorical"][:, self.scenario_field]

    def run(self, x: Tensor, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.forward(x, self.scenario_ids(inputs))

    def gate_weights_on(self, x: Tensor, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.gate_weights(x, self.scenario_ids(inputs))

    def scenario_vectors(self, scenario: Tensor) -> Tensor:
        """``e_p`` per row, ``(B, scenario_dim)``; zero for id 0 (unseen)."""
        table = torch.cat([self.scenario_embedding.new_zeros(1, self.scenario_embedding.shape[1]), self.scenario_embedding])
        return table[scenario]

    def gate_inputs(self, x: Tensor, scenario: Tensor | None) -> Tensor:
        """The per-row part of ``z``: ``[e_p ; mean field embedding]``, ``(B, scenario_dim + D)``."""
        if scenario is None:
            scenario = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if self.n_others:
            total = x[:, self.fields].reshape(x.shape[0], -1, self.embedding_dim).sum(1)
            mean = (total - x[:, self.own]) / self.n_others
        else:
            mean = x.new_zeros(x.shape[0], self.embedding_dim)
        return torch.cat([self.scenario_vectors(scenario), mean], dim=1)

    def mixtures(self, x: Tensor, scenario: Tensor | None) -> tuple[Tensor, Tensor]:
        """Expert weights ``(B, T, K)`` and critic weights ``(B, T, C)``."""
        row = self.gate_inputs(x, scenario)
        return self.expert_gate(row, self.task_embedding), self.critic_gate(row, self.task_embedding)

    def forward(self, x: Tensor, scenario: Tensor | None = None) -> dict[str, Tensor]:
        """``scenario``: ``(B,)`` ids of the scenario field (0 = unseen: shared parameters only; None: all unseen)."""
        experts = self.experts(x)  # (B, K, d)
        if torch.is_grad_enabled():
            self.last_shared_features = experts
        a, b = self.mixtures(x, scenario)
        h = torch.bmm(a, experts)  # (B, T, d): each task's expert mixture
        B, T = h.shape[0], h.shape[1]
        critics = self.critics(h.reshape(B * T, -1)).view(B, T, self.options.critics, -1)  # (B, T, C, dc)
        r = (b.unsqueeze(-1) * critics).sum(2)  # (B, T, dc)
        return {name: r[:, t] for t, name in enumerate(self.task_names)}

    def gate_weights(self, x: Tensor, scenario: Tensor | None = None) -> dict[str, Tensor]:
        """``experts/<task>`` ``(B, K)`` and ``critics/<task>`` ``(B, C)`` for each row's scenario."""
        a, b = self.mixtures(x, scenario)
        out = {f"experts/{name}": a[:, t] for t, name in enumerate(self.task_names)}
        out.update({f"critics/{name}": b[:, t] for t, name in enumerate(self.task_names)})
        return out

    def gate_experts(self) -> dict[str, list[str]]:
        experts = [f"expert{k}" for k in range(self.options.experts)]
        critics = [f"critic{c}" for c in range(self.options.critics)]
        return {**{f"experts/{t}": experts for t in self.task_names}, **{f"critics/{t}": critics for t in self.task_names}}


__all__ = ["MetaHeac", "MetaHeacOptions", "ScenarioGate"]
