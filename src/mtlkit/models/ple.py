"""CGC and PLE: customized gate control and progressive layered extraction (Tang et al., "Progressive
Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
Recommendations", RecSys 2020).

Each extraction level has ``experts_per_task`` task-specific experts per task and
``shared_experts`` shared experts. Task ``k``'s gate mixes only its own and the shared experts,
``g^k(x) = w^k(x) S^k(x)`` with ``w^k(x) = softmax(W_g^k x)`` and ``S^k(x) = [E_k, E_s]``
(CGC, Eq. 2–4). PLE stacks levels (Eq. 5–6): from level 2 on, task ``k``'s experts and gate read
task ``k``'s fused output of the previous level, ``g^{k,j}(x) = w^{k,j}(g^{k,j−1}(x)) S^{k,j}(x)``,
while the shared experts and the shared gate read the previous shared fused output; the shared
module's gate at every non-final level covers *all* experts of its level (shared and every
task's). The last level has task gates only, and its outputs go to the towers. CGC is PLE with
one level. Experts of a level are one :class:`mtlkit.nn.experts.ExpertBank` ordered
``[task 1 experts, …, task K experts, shared experts]``; the task gates are one batched op.

Example:
    >>> import torch
    >>> bb = PLE(10, ["ctr", "cvr"], PLE.Options(levels=2, experts_per_task=2, shared_experts=1, expert_hidden=[8]))
    >>> {k: v.shape for k, v in bb(torch.zeros(1, 10)).items()}
    {'ctr': torch.Size([1, 8]), 'cvr': torch.Size([1, 8])}
    >>> {k: v.shape[1] for k, v in bb.gate_weights(torch.zeros(1, 10)).items()}
    {'level1/ctr': 3, 'level1/cvr': 3, 'level1/shared': 5, 'level2/ctr': 3, 'level2/cvr': 3}
    >>> bb.gate_experts()["level2/cvr"]
    ['cvr/0', 'cvr/1', 'shared/0']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.models.base import BACKBONES, Backbone
from mtlkit.models.mmoe import ExpertGateOptions, make_gates
from mtlkit.nn.experts import ExpertBank, mix, shared_input_linears
from mtlkit.nn.vocabulary_affine import FactoredInput


class CGCOptions(ExpertGateOptions):
    experts_per_task: int = Field(default=1, ge=1)
    shared_experts: int = Field(default=1, ge=0)


class PLEOptions(CGCOptions):
    levels: int = Field(default=2, ge=1)


class ExtractionLevel(nn.Module):
    """One CGC / extraction network. Input ``(B, in)`` (level 1) or ``(B, K+1, in)``: the previous
    level's fused outputs for the ``K`` tasks then the shared module."""

    expert_group: Tensor
    task_experts: Tensor

    def __init__(self, input_dim: int, n_tasks: int, options: CGCOptions, final: bool) -> None:
        super().__init__()
        per_task, shared = options.experts_per_task, options.shared_experts
        n_experts = n_tasks * per_task + shared
        self.n_tasks, self.n_experts = n_tasks, n_experts
        self.experts = ExpertBank(n_experts, input_dim, options.expert_hidden, options.activation, options.dropout,
                                  options.batch_norm)
        self.task_gates = make_gates(options, input_dim, n_tasks, per_task + shared)
        self.shared_gate = None if final else make_gates(options, input_dim, 1, n_experts)
        # Which previous output each expert reads: task t's experts read t's, shared ones read K.
        group = [t for t in range(n_tasks) for _ in range(per_task)] + [n_tasks] * shared
        # Experts task t's gate sees, S^k = [E_k, E_s] (Eq. 4), as indices into the bank.
        seen = [[t * per_task + j for j in range(per_task)] + [n_tasks * per_task + s for s in range(shared)] for t in range(n_tasks)]
        self.register_buffer("expert_group", torch.tensor(group, dtype=torch.long), persistent=False)
        self.register_buffer("task_experts", torch.tensor(seen, dtype=torch.long).view(n_tasks, -1), persistent=False)
        self.output_dim = self.experts.output_dim

    def forward(self, h: Tensor | FactoredInput, constant: slice | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """→ fused ``(B, K or K+1, d)``, task gate weights ``(B, K, n)``, shared gate weights ``(B, 1, E)``.
        ``constant``: level 1's input columns that need no gradient (see :class:`~mtlkit.models.base.Backbone`)."""
        gates = [self.task_gates] + ([self.shared_gate] if self.shared_gate is not None else [])
        if isinstance(h, FactoredInput) or h.dim() == 2:  # level 1: experts and gates read the same input, one GEMM for all
            first, *logits = shared_input_linears(h, [self.experts.first_layer, *(g.linear for g in gates)], constant)
            experts = self.experts.from_first_layer(first)  # (B, E, d)
        else:
            experts = self.experts(h.index_select(1, self.expert_group))
            logits = [self.task_gates.linear(h[:, : self.n_tasks])]
            if self.shared_gate is not None:
                logits.append(self.shared_gate.linear(h[:, self.n_tasks]))
        task_w = self.task_gates.from_logits(logits[0])  # (B, K, n)
        index = self.task_experts.expand(task_w.shape[0], -1, -1)
        # Place each task's weights over the whole bank (zeros elsewhere): one bmm mixes all gates.
        weights = task_w.new_zeros(task_w.shape[0], self.n_tasks, self.n_experts).scatter(2, index, task_w)
        shared_w = None
        if self.shared_gate is not None:
            shared_w = self.shared_gate.from_logits(logits[1])  # (B, 1, E)
            weights = torch.cat([weights, shared_w], dim=1)
        return mix(weights, experts), task_w, shared_w


@BACKBONES.register("ple")
class PLE(Backbone):
    Options: ClassVar[type[CGCOptions]] = PLEOptions  # CGC: CGCOptions
    options: CGCOptions

    def __init__(self, input_dim: int, task_names: Sequence[str], options: CGCOptions) -> None:
        super().__init__(input_dim, task_names, options)
        n_levels = getattr(options, "levels", 1)
        width = options.expert_hidden[-1]
        self.levels = nn.ModuleList(
            ExtractionLevel(input_dim if j == 0 else width, len(self.task_names), options, final=j == n_levels - 1)
            for j in range(n_levels)
        )
        self.output_dim = width

    def takes_factored_input(self) -> bool:
        return True

    def _run(self, x: Tensor | FactoredInput, collect: dict[str, Tensor] | None = None) -> Tensor:
        h: Tensor | FactoredInput = x
        fused = None
        for j, level in enumerate(self.levels, start=1):
            fused, task_w, shared_w = level(h, self.constant_input if j == 1 else None)
            h = fused
            if collect is not None:
                collect.update({f"level{j}/{name}": task_w[:, t] for t, name in enumerate(self.task_names)})
                if shared_w is not None:
                    collect[f"level{j}/shared"] = shared_w[:, 0]
        assert fused is not None  # at least one level
        return fused

    def forward(self, x: Tensor | FactoredInput) -> dict[str, Tensor]:
        h = self._run(x)
        return {name: h[:, t] for t, name in enumerate(self.task_names)}

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"level{j}/{task}" | "level{j}/shared": (B, experts seen)}`` in the current mode."""
        collect: dict[str, Tensor] = {}
        self._run(x, collect)
        return collect

    def gate_experts(self) -> dict[str, list[str]]:
        """Labels of the experts behind each gate's columns (``task/i`` or ``shared/i``)."""
        per_task, shared = self.options.experts_per_task, self.options.shared_experts
        own = {name: [f"{name}/{i}" for i in range(per_task)] for name in self.task_names}
        shared_labels = [f"shared/{i}" for i in range(shared)]
        labels: dict[str, list[str]] = {}
        for j, level in enumerate(self.levels, start=1):
            labels.update({f"level{j}/{name}": own[name] + shared_labels for name in self.task_names})
            if level.shared_gate is not None:
                labels[f"level{j}/shared"] = [e for name in self.task_names for e in own[name]] + shared_labels
        return labels


@BACKBONES.register("cgc")
class CGC(PLE):
    """Customized gate control: a single extraction level (Tang et al. 2020, Eq. 2–4)."""

    Options = CGCOptions
