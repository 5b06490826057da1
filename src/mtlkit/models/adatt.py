"""AdaTT: adaptive task-to-task fusion (Li et al., "AdaTT: Adaptive Task-to-Task Fusion Network for
Multitask Learning in Recommendations", KDD 2023).

Every task ``t`` has ``m = experts_per_task`` experts ``E_t`` of its own at each fusion level (and
``shared_experts`` shared ones ``E_s``; 0 is the paper's AdaTT-sp). Task ``t``'s fusion unit mixes
**all** experts of the level — every task's and the shared ones — with a gate on its own input
(Eq. 3–4, ``AllExpertLinearComb``), plus a residual linear combination of its *native* experts
only (Eq. 5, ``NativeExpertLinearComb``: learned weights ``v_t`` when ``m > 1``, the expert itself
when ``m = 1``):

    f^t(x) = Σ_{i ∈ all experts} softmax(W_t x^t)_i E_i(·)  +  Σ_{j ∈ E_t} v_{t,j} E_j(·)

At level 1 every expert and gate reads the encoded input; from level 2 on, task ``t``'s experts
and gate read task ``t``'s fusion output of the previous level and the shared experts read the
shared module's (which, at non-final levels, mixes all experts with its own gate, like PLE's).
The last level's task outputs go to the towers. ``self_residual: false`` drops Eq. 5 (the
paper's ablation). The experts of a level are one :class:`~mtlkit.nn.experts.ExpertBank` ordered
``[task 1 experts, …, task T experts, shared experts]``; gates and residual are one ``bmm``.

Example:
    >>> import torch
    >>> bb = AdaTT(10, ["ctr", "cvr"], AdaTT.Options(levels=2, experts_per_task=2, expert_hidden=[8]))
    >>> {k: v.shape for k, v in bb(torch.zeros(1, 10)).items()}
    {'ctr': torch.Size([1, 8]), 'cvr': torch.Size([1, 8])}
    >>> {k: v.shape[1] for k, v in bb.gate_weights(torch.zeros(1, 10)).items()}
    {'level1/ctr': 4, 'level1/cvr': 4, 'level2/ctr': 4, 'level2/cvr': 4}
    >>> bb.gate_experts()["level1/ctr"]
    ['ctr/0', 'ctr/1', 'cvr/0', 'cvr/1']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.models.base import BACKBONES, Backbone
from mtlkit.models.mmoe import ExpertGateOptions, make_gates
from mtlkit.nn.experts import ExpertBank, mix


class AdaTTOptions(ExpertGateOptions):
    levels: int = Field(default=2, ge=1)
    experts_per_task: int = Field(default=1, ge=1)
    shared_experts: int = Field(default=0, ge=0, description="0: AdaTT-sp (task-specific experts only)")
    self_residual: bool = Field(default=True, description="Eq. 5: the native-expert linear combination")


class FusionLevel(nn.Module):
    """One AdaTT fusion level. Input ``(B, in)`` (level 1) or ``(B, G_prev, in)`` (the previous level's
    outputs: the ``T`` tasks, then the shared module when it has one)."""

    expert_group: Tensor
    native: Tensor
    learned_rows: Tensor

    def __init__(self, input_dim: int, n_tasks: int, options: AdaTTOptions, final: bool) -> None:
        super().__init__()
        m, shared = options.experts_per_task, options.shared_experts
        n_experts = n_tasks * m + shared
        self.n_tasks, self.n_experts, self.m = n_tasks, n_experts, m
        self.experts = ExpertBank(n_experts, input_dim, options.expert_hidden, options.activation, options.dropout,
                                  options.batch_norm)
        self.has_shared_module = shared > 0 and not final
        self.n_gates = n_tasks + int(self.has_shared_module)
        self.gates = make_gates(options, input_dim, self.n_gates, n_experts)
        # Each expert reads its module's previous output: task t's read t's, the shared ones the shared output.
        group = [t for t in range(n_tasks) for _ in range(m)] + [n_tasks] * shared
        self.register_buffer("expert_group", torch.tensor(group, dtype=torch.long), persistent=False)
        # Native experts of each fusion unit (task t: its own; the shared module: the shared experts).
        native = torch.zeros(self.n_gates, n_experts)
        for g in range(self.n_gates):
            native[g, torch.tensor(group) == g] = 1.0
        self.register_buffer("native", native, persistent=False)
        self.residual_weights: nn.Parameter | None = None
        if options.self_residual and (m > 1 or (self.has_shared_module and shared > 1)):
            # Learned v_t per native expert (nn.Linear(m, 1)'s initialisation); a lone native expert keeps weight 1.
            bound = 1.0 / native.sum(1, keepdim=True).clamp_min(1).sqrt()
            init = (torch.rand(self.n_gates, n_experts) * 2 - 1) * bound
            self.residual_weights = nn.Parameter(init)
        self.register_buffer("learned_rows", native.sum(1, keepdim=True) > 1, persistent=False)
        self.self_residual = options.self_residual
        self.output_dim = self.experts.output_dim

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """→ fused ``(B, G, d)`` and gate weights ``(B, G, E)`` (``G`` = tasks [+ shared module])."""
        if h.dim() == 2:
            expert_in, gate_in = h, h
        else:
            expert_in = h.index_select(1, self.expert_group)
            gate_in = h[:, : self.n_gates]
        experts = self.experts(expert_in)
        weights = self.gates(gate_in)  # (B, G, E)
        combined = weights
        if self.self_residual:
            native = self.native
            if self.residual_weights is not None:
                native = torch.where(self.learned_rows, self.residual_weights * self.native, self.native)
            combined = weights + native
        return mix(combined, experts), weights


@BACKBONES.register("adatt")
class AdaTT(Backbone):
    Options = AdaTTOptions
    options: AdaTTOptions

    def __init__(self, input_dim: int, task_names: Sequence[str], options: AdaTTOptions) -> None:
        super().__init__(input_dim, task_names, options)
        width = options.expert_hidden[-1]
        n = options.levels
        self.levels = nn.ModuleList(
            FusionLevel(input_dim if j == 0 else width, len(self.task_names), options, final=j == n - 1) for j in range(n)
        )
        self.output_dim = width

    def _run(self, x: Tensor, collect: dict[str, Tensor] | None = None) -> Tensor:
        h = x
        for j, level in enumerate(self.levels, start=1):
            h, weights = level(h)
            if collect is not None:
                collect.update({f"level{j}/{name}": weights[:, t] for t, name in enumerate(self.task_names)})
                if level.has_shared_module:
                    collect[f"level{j}/shared"] = weights[:, -1]
        return h

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self._run(x)
        return {name: h[:, t] for t, name in enumerate(self.task_names)}

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"level{j}/{task}" | "level{j}/shared": (B, all experts of the level)}`` in the current mode."""
        collect: dict[str, Tensor] = {}
        self._run(x, collect)
        return collect

    def gate_experts(self) -> dict[str, list[str]]:
        m, shared = self.options.experts_per_task, self.options.shared_experts
        labels = [f"{name}/{i}" for name in self.task_names for i in range(m)] + [f"shared/{i}" for i in range(shared)]
        out: dict[str, list[str]] = {}
        for j, level in enumerate(self.levels, start=1):
            out.update({f"level{j}/{name}": labels for name in self.task_names})
            if level.has_shared_module:
                out[f"level{j}/shared"] = labels
        return out


__all__ = ["AdaTT", "AdaTTOptions"]
