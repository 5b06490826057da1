"""PEPNet and PPNet: parameter and embedding personalised networks (Chang et al., "PEPNet: Parameter
and Embedding Personalized Network for Infusing with Personalized Prior Information", KDD 2023).

The gate neural unit (Gate NU, Eq. 1–2): ``δ = γ · σ(W₂ ReLU(W₁ z + b₁) + b₂)``, a scale in
``(0, γ)`` per unit (``gamma`` = 2 in the paper, so 1 is neutral).

* **EPNet** (embedding personalisation, Eq. 3–4): the general input ``E`` (the encoded vector) is
  rescaled unit by unit by a gate on the *domain* features and the stop-gradient input,
  ``δ_domain = U_ep(E(F_d) ⊕ ⊘(E))``, ``O_ep = δ_domain ⊗ E``.
* **PPNet** (parameter personalisation, Eq. 5–7): every task ``t`` has a tower DNN of ``hidden``
  widths; the input of each of its layers is rescaled by a gate on the *prior* features (user, item,
  author ids in the paper) and the stop-gradient EPNet output,
  ``δ^(l)_task = U^(l)_pp(O_prior ⊕ ⊘(O_ep))`` split into one ``(width_l)`` slice per task,
  ``H_t^(l+1) = f((δ^(l)_t ⊗ H_t^(l)) W_t^(l) + b_t^(l))``, ``H_t^(0) = O_ep``.

``domain_features`` and ``prior_features`` name categorical features; their embeddings are sliced
out of the encoded input (:class:`~mtlkit.models.layout.InputLayout`). ``epnet: false`` leaves the
input as it is (PPNet alone, Kuaishou's earlier model); ``ppnet: false`` leaves the towers
ungated. Without domain (prior) features a gate reads only its stop-gradient input: a
self-gate, not a personalised one — name them to personalise. The per-task towers are one batched op over the task axis; the model's own ``tower``
(usually empty) follows. The gates are per-unit scales, not mixtures over experts, so
:meth:`gate_weights` lists none; :meth:`domain_scale` and :meth:`layer_scales` expose them.

Example:
    >>> import torch
    >>> from mtlkit.models.layout import InputLayout
    >>> layout = InputLayout(["user", "item", "country"], [5, 7, 3], embedding_dim=2, numeric_dim=1)
    >>> bb = PEPNet.create(7, ["ctr", "cvr"], PEPNet.Options(hidden=[8, 4], domain_features=["country"],
    ...                    prior_features=["user", "item"]), layout)
    >>> {k: v.shape for k, v in bb(torch.zeros(1, 7)).items()}
    {'ctr': torch.Size([1, 4]), 'cvr': torch.Size([1, 4])}
    >>> [s.shape for s in bb.layer_scales(torch.zeros(1, 7))]
    [torch.Size([1, 2, 7]), torch.Size([1, 2, 8])]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.models.layout import InputLayout
from mtlkit.nn.experts import EXPERT_ACTIVATIONS, BatchedLinear
from mtlkit.nn.mlp import BatchNorm


class PEPNetOptions(BackboneOptions):
    hidden: list[int] = Field(default_factory=lambda: [64, 32], min_length=1, description="each task's tower DNN")
    domain_features: list[str] = Field(default_factory=list, description="EPNet's gate input (the domain side)")
    prior_features: list[str] = Field(default_factory=list, description="PPNet's gate input (user/item/author ids)")
    epnet: bool = True
    ppnet: bool = True
    gamma: float = Field(default=2.0, gt=0.0)
    gate_hidden: int = Field(default=64, ge=1)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False


class GateNU(nn.Module):
    """``γ · σ(W₂ ReLU(W₁ z + b₁) + b₂)`` (PEPNet Eq. 1–2)."""

    def __init__(self, input_dim: int, hidden: int, output_dim: int, gamma: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, output_dim))
        self.gamma = gamma

    def forward(self, z: Tensor) -> Tensor:
        return self.gamma * torch.sigmoid(self.net(z))


def feature_columns(layout: InputLayout | None, names: Sequence[str], key: str) -> list[int]:
    if names and layout is None:
        raise ConfigError(f"{key}: needs the input layout; build the model with build_model or Backbone.create")
    columns: list[int] = []
    for name in names:
        s = layout.field_columns(name, key=key)  # type: ignore[union-attr]
        columns.extend(range(s.start, s.stop))
    return columns


@BACKBONES.register("pepnet")
class PEPNet(Backbone):
    Options = PEPNetOptions
    options: PEPNetOptions
    domain_columns: Tensor
    prior_columns: Tensor

    def __init__(self, input_dim: int, task_names: Sequence[str], options: PEPNetOptions, layout: InputLayout | None = None) -> None:
        super().__init__(input_dim, task_names, options)
        domain = feature_columns(layout, options.domain_features if options.epnet else [], "model.options.domain_features")
        prior = feature_columns(layout, options.prior_features if options.ppnet else [], "model.options.prior_features")
        self.register_buffer("domain_columns", torch.tensor(domain, dtype=torch.long), persistent=False)
        self.register_buffer("prior_columns", torch.tensor(prior, dtype=torch.long), persistent=False)
        T = len(self.task_names)
        self.n_tasks = T
        self.epnet = GateNU(len(domain) + input_dim, options.gate_hidden, input_dim, options.gamma) if options.epnet else None
        widths = [input_dim, *options.hidden]
        self.widths = widths
        self.layers = nn.ModuleList(BatchedLinear(T, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(BatchNorm(T * b) for b in options.hidden) if options.batch_norm else None
        self.ppnet = nn.ModuleList(
            GateNU(len(prior) + input_dim, options.gate_hidden, T * w, options.gamma) for w in widths[:-1]
        ) if options.ppnet else None
        self.activation = EXPERT_ACTIVATIONS[options.activation]()
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.output_dim = widths[-1]

    @classmethod
    def create(cls, input_dim: int, task_names: Sequence[str], options: PEPNetOptions, layout: InputLayout) -> PEPNet:  # type: ignore[override]
        return cls(input_dim, task_names, options, layout)

    def domain_scale(self, x: Tensor) -> Tensor:
        """EPNet's ``δ_domain``, ``(B, input_dim)``; ones without EPNet."""
        if self.epnet is None:
            return torch.ones_like(x)
        return self.epnet(torch.cat([x.index_select(1, self.domain_columns), x.detach()], dim=1))

    def layer_scales(self, x: Tensor, o_ep: Tensor | None = None) -> list[Tensor]:
        """PPNet's ``δ^(l)_task`` for each tower layer's input, ``(B, tasks, width_l)``; empty without PPNet."""
        if self.ppnet is None:
            return []
        if o_ep is None:
            o_ep = self.domain_scale(x) * x
        z = torch.cat([x.index_select(1, self.prior_columns), o_ep.detach()], dim=1)
        return [gate(z).view(x.shape[0], self.n_tasks, w) for gate, w in zip(self.ppnet, self.widths[:-1])]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        o_ep = self.domain_scale(x) * x
        scales = self.layer_scales(x, o_ep)
        h = o_ep.unsqueeze(1).expand(-1, self.n_tasks, -1)
        for i, layer in enumerate(self.layers):
            if scales:
                h = h * scales[i]
            h = layer(h)
            if self.norms is not None:
                h = self.norms[i](h.flatten(1)).view_as(h)
            h = self.dropout(self.activation(h))
        return {name: h[:, t] for t, name in enumerate(self.task_names)}


@BACKBONES.register("ppnet")
class PPNet(PEPNet):
    """PPNet alone: per-task towers gated by the prior features, no embedding personalisation."""

    class Options(PEPNetOptions):
        epnet: bool = False


__all__ = ["GateNU", "PEPNet", "PEPNetOptions", "PPNet"]
