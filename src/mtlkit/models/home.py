"""HoME: hierarchy of multi-gate experts (Wang et al., "HoME: Hierarchy of Multi-Gate Experts for
Multi-Task Learning at Kuaishou", arXiv:2408.05430, 2024).

Two expert levels. Tasks are grouped into meta categories (``task_groups``; e.g. the passive
watch-time tasks and the interactive like/comment/share tasks; default: one group of all tasks).

* **Meta level.** Global shared experts ``S¹`` and ``group_experts`` experts ``G¹_c`` per category
  read the input. Category ``c``'s gate mixes ``[G¹_c, S¹]`` into ``m_c``; a global gate mixes all
  meta experts into ``m_s``.
* **Task level.** Task ``t`` (category ``c``) has ``experts_per_task`` experts ``T_t`` reading
  ``m_c``; category experts ``G²_c`` read ``m_c``; global experts ``S²`` read ``m_s``. Task
  ``t``'s gate reads ``m_c`` and mixes ``[T_t, G²_c, S²]``; its output goes to the tower.

The paper's four fixes, each a switch so its effect can be measured:

* ``expert_norm`` (§3.2, against expert collapse): every expert layer is ``Swish(BN(W x + b))``,
  so experts' outputs have one scale and none dies under ReLU. Off: ``activation`` without norm.
* ``hierarchy_mask`` (§3.3, against expert degradation): the gates above see only their own,
  their category's and the global experts. Off: every gate mixes every expert of its level.
* ``feature_gates`` (§3.4, against expert underfitting): each expert ``e`` reads a privatised
  input ``x_e = x ⊙ 2·σ(x A_e B_e)``, a LoRA-style low-rank gate (rank ``feature_gate_rank``;
  ``B_e = 0`` at the start, so every gate starts at 1).
* ``self_gates`` (§3.4): a residual of each fusion unit's own experts,
  ``Σ_{j ∈ native} σ(w_j · x)_j E_j`` (the category's experts at the meta level, the task's at the
  task level), added to the gated mixture, so deep gates cannot starve a unit of its own experts.

All four off and one category is a two-level MMoE over ``[task, category, global]`` experts.

Example:
    >>> import torch
    >>> bb = HoME(10, ["ctr", "like", "watch"], HoME.Options(task_groups=[["ctr", "like"], ["watch"]], expert_hidden=[8]))
    >>> {k: v.shape for k, v in bb(torch.zeros(2, 10)).items()}
    {'ctr': torch.Size([2, 8]), 'like': torch.Size([2, 8]), 'watch': torch.Size([2, 8])}
    >>> bb.gate_experts()["task/watch"]
    ['task/watch/0', 'group1/0', 'shared/0']
    >>> bb.gate_experts()["meta/group0"]
    ['group0/0', 'shared/0']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.base import BACKBONES, Backbone
from mtlkit.models.mmoe import ExpertGateOptions, make_gates
from mtlkit.nn.experts import BatchedLinear, ExpertBank, mix


class HoMEOptions(ExpertGateOptions):
    task_groups: list[list[str]] | None = Field(default=None, description="meta categories of tasks; default: one group")
    shared_experts: int = Field(default=1, ge=1)
    group_experts: int = Field(default=1, ge=1)
    experts_per_task: int = Field(default=1, ge=1)
    expert_norm: bool = True
    hierarchy_mask: bool = True
    feature_gates: bool = True
    feature_gate_rank: int = Field(default=8, ge=1)
    self_gates: bool = True


class FeatureGates(nn.Module):
    """``x_e = x ⊙ 2σ(x A_e B_e)`` for each of ``n`` experts; input ``(B, in)`` or ``(B, n, in)`` → ``(B, n, in)``."""

    def __init__(self, n: int, width: int, rank: int) -> None:
        super().__init__()
        self.down = BatchedLinear(n, width, rank, bias=False)
        self.up = BatchedLinear(n, rank, width, bias=False)
        nn.init.zeros_(self.up.weight)
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        scale = 2.0 * torch.sigmoid(self.up(self.down(x)))
        base = x.unsqueeze(1) if x.dim() == 2 else x
        return base * scale


class GatedLevel(nn.Module):
    """Experts (one bank), each reading one of the level's inputs, and gates over subsets of them.

    ``sources[e]``: which input expert ``e`` reads; ``gate_sources[g]``: which input gate ``g`` reads;
    ``seen[g]``: the experts gate ``g`` mixes; ``native[g]``: the experts of gate ``g``'s self-gate.
    """

    sources: Tensor
    gate_sources: Tensor
    native: Tensor

    def __init__(self, width: int, options: HoMEOptions, sources: list[int], gate_sources: list[int],
                 seen: list[list[int]], native: list[list[int]]) -> None:
        super().__init__()
        n = len(sources)
        norm = options.expert_norm
        self.experts = ExpertBank(n, width, options.expert_hidden, "silu" if norm else options.activation, options.dropout,
                                  batch_norm=norm or options.batch_norm)
        self.feature_gates = FeatureGates(n, width, options.feature_gate_rank) if options.feature_gates else None
        widths = {len(s) for s in seen}
        if len(widths) != 1:  # gates with different expert counts: one Gates module per gate
            self.gates = nn.ModuleList(make_gates(options, width, 1, len(s)) for s in seen)
        else:
            self.gates = nn.ModuleList([make_gates(options, width, len(seen), widths.pop())])
        self.self_gates = BatchedLinear(len(seen), width, n, bias=False) if options.self_gates else None
        native_mask = torch.zeros(len(seen), n)
        for g, experts in enumerate(native):
            native_mask[g, experts] = 1.0
        self.register_buffer("sources", torch.tensor(sources), persistent=False)
        self.register_buffer("gate_sources", torch.tensor(gate_sources), persistent=False)
        self.register_buffer("native", native_mask, persistent=False)
        self.seen = [torch.tensor(s) for s in seen]
        for g, s in enumerate(self.seen):
            self.register_buffer(f"seen{g}", s, persistent=False)
        self.n_experts, self.n_gates = n, len(seen)
        # One input for every expert (or every gate), as at the meta level: read it as (B, width), so
        # the experts' and gates' first maps run as one GEMM (BatchedLinear's shared-input path) and
        # nothing copies it E times: the census step 1.15x faster (with or without the fixes; 1 thread, interleaved A/B).
        self._one_expert_source = sources[0] if len(set(sources)) == 1 else None
        self._one_gate_source = gate_sources[0] if len(set(gate_sources)) == 1 else None
        self.output_dim = self.experts.output_dim

    def forward(self, h: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``h``: ``(B, inputs, width)`` → fused ``(B, gates, d)`` and each gate's weights over the experts it sees."""
        one, one_gate = self._one_expert_source, self._one_gate_source
        expert_in = h[:, one] if one is not None else h.index_select(1, self.sources)  # (B, width) or (B, E, width)
        if self.feature_gates is not None:
            expert_in = self.feature_gates(expert_in)
        experts = self.experts(expert_in)  # (B, E, d)
        gate_in = h[:, one_gate] if one_gate is not None else h.index_select(1, self.gate_sources)  # (B, width) or (B, G, width)
        if len(self.gates) == 1:
            per_gate = list(self.gates[0](gate_in).unbind(1))
        elif one_gate is not None:
            per_gate = [gates(gate_in)[:, 0] for gates in self.gates]
        else:
            per_gate = [gates(gate_in[:, g : g + 1])[:, 0] for g, gates in enumerate(self.gates)]
        rows = []
        for g, w in enumerate(per_gate):
            index = self.get_buffer(f"seen{g}")
            rows.append(w.new_zeros(w.shape[0], self.n_experts).index_copy(1, index, w))
        weights = torch.stack(rows, dim=1)  # (B, G, E), zero outside what each gate sees
        if self.self_gates is not None:
            weights = weights + torch.sigmoid(self.self_gates(gate_in)) * self.native
        return mix(weights, experts), per_gate


@BACKBONES.register("home")
class HoME(Backbone):
    Options = HoMEOptions
    options: HoMEOptions

    def __init__(self, input_dim: int, task_names: Sequence[str], options: HoMEOptions) -> None:
        super().__init__(input_dim, task_names, options)
        tasks = self.task_names
        groups = options.task_groups if options.task_groups is not None else [list(tasks)]
        flat = [t for g in groups for t in g]
        if sorted(flat) != sorted(tasks) or len(flat) != len(set(flat)) or any(not g for g in groups):
            raise ConfigError(f"model.options.task_groups: must partition the tasks {tasks} into non-empty groups, got {groups}")
        self.groups = groups
        self.group_of = {t: c for c, g in enumerate(groups) for t in g}
        C, k, s, m = len(groups), options.group_experts, options.shared_experts, options.experts_per_task
        mask = options.hierarchy_mask
        # Meta level: experts [group 0 ×k, …, group C−1 ×k, shared ×s]; gates: each group, then the global one.
        meta_n = C * k + s
        shared1 = list(range(C * k, meta_n))
        meta_seen = [(list(range(c * k, (c + 1) * k)) + shared1) if mask else list(range(meta_n)) for c in range(C)]
        meta_seen.append(list(range(meta_n)))
        meta_native = [list(range(c * k, (c + 1) * k)) for c in range(C)] + [shared1]
        self.meta = GatedLevel(input_dim, options, [0] * meta_n, [0] * (C + 1), meta_seen, meta_native)
        width = options.expert_hidden[-1]
        # Task level: experts [task 0 ×m, …, group 0 ×k, …, shared ×s], reading m_c (group c) or m_s (index C).
        T = len(tasks)
        task_n = T * m + C * k + s
        sources = [self.group_of[t] for t in tasks for _ in range(m)] + [c for c in range(C) for _ in range(k)] + [C] * s
        shared2 = list(range(T * m + C * k, task_n))
        task_seen, task_native = [], []
        for i, t in enumerate(tasks):
            own = list(range(i * m, (i + 1) * m))
            c = self.group_of[t]
            group = list(range(T * m + c * k, T * m + (c + 1) * k))
            task_seen.append(own + group + shared2 if mask else list(range(task_n)))
            task_native.append(own)
        self.task_level = GatedLevel(width, options, sources, [self.group_of[t] for t in tasks], task_seen, task_native)
        self.output_dim = width

    def _run(self, x: Tensor, collect: dict[str, Tensor] | None = None) -> Tensor:
        meta, meta_w = self.meta(x.unsqueeze(1))  # (B, C+1, d)
        out, task_w = self.task_level(meta)
        if collect is not None:
            collect.update({f"meta/group{c}": meta_w[c] for c in range(len(self.groups))})
            collect["meta/shared"] = meta_w[-1]
            collect.update({f"task/{t}": task_w[i] for i, t in enumerate(self.task_names)})
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = self._run(x)
        return {name: out[:, i] for i, name in enumerate(self.task_names)}

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``meta/group{c}``, ``meta/shared`` and ``task/{task}``: each gate's softmax over the experts it sees
        (the self-gates are sigmoid residuals, not mixtures, and are not listed)."""
        collect: dict[str, Tensor] = {}
        self._run(x, collect)
        return collect

    def gate_experts(self) -> dict[str, list[str]]:
        o = self.options
        C = len(self.groups)
        meta_labels = [f"group{c}/{j}" for c in range(C) for j in range(o.group_experts)] + [f"shared/{j}" for j in range(o.shared_experts)]
        task_labels = ([f"task/{t}/{j}" for t in self.task_names for j in range(o.experts_per_task)]
                       + [f"group{c}/{j}" for c in range(C) for j in range(o.group_experts)]
                       + [f"shared/{j}" for j in range(o.shared_experts)])
        out: dict[str, list[str]] = {}
        for g, seen in enumerate(self.meta.seen):
            out[f"meta/group{g}" if g < C else "meta/shared"] = [meta_labels[e] for e in seen.tolist()]
        for i, t in enumerate(self.task_names):
            out[f"task/{t}"] = [task_labels[e] for e in self.task_level.seen[i].tolist()]
        return out


__all__ = ["HoME", "HoMEOptions"]
