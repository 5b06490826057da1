"""DBMTL: deep Bayesian multi-target learning (Wen et al., "Deep Bayesian Multi-Target Learning for
Recommender Systems", arXiv:1902.09154, 2019; EasyRec's and TorchEasyRec's ``DBMTL``).

Instead of treating targets as independent given the input, DBMTL factorises their joint
likelihood along task dependencies (Eq. 2): ``p(t₁, t₂, t₃ | x) = p(t₁|x) p(t₂|t₁, x) p(t₃|t₁, t₂, x)``,
so the log-likelihood is the sum of the per-task losses (Eq. 3) and each conditional is a network
that reads the representations of the tasks it depends on. Architecture (§3.2, Fig. 2):

    b = f_bottom(x)                         shared bottom
    h_t = f_tower,t(b)                      one tower per task (one batched op)
    r_t = f_relation,t([h_t ⊕ r_p for p ∈ parents(t)])    the Bayesian relation layer

and ``r_t`` goes to task ``t``'s output layer. ``depends_on`` maps a task to the tasks it is
conditioned on (default: every earlier task, the paper's full chain; ``{}``: none). Gradients of a
task's loss reach its parents' towers, never the other way round.

Example:
    >>> import torch
    >>> bb = DBMTL(10, ["ctr", "cvr"], DBMTL.Options(bottom=[16], tower=[8], relation=[4]))
    >>> {k: v.shape for k, v in bb(torch.zeros(1, 10)).items()}
    {'ctr': torch.Size([1, 4]), 'cvr': torch.Size([1, 4])}
    >>> bb.parents
    {'ctr': [], 'cvr': ['ctr']}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.nn import MLP
from mtlkit.nn.experts import ExpertBank


class DBMTLOptions(BackboneOptions):
    bottom: list[int] = Field(default_factory=lambda: [128])
    tower: list[int] = Field(default_factory=lambda: [64], min_length=1)
    relation: list[int] = Field(default_factory=lambda: [32], min_length=1)
    depends_on: dict[str, list[str]] | None = Field(default=None, description="task → tasks it is conditioned on; default: all earlier")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False


def dependency_order(tasks: Sequence[str], parents: dict[str, list[str]]) -> list[str]:
    """Tasks with every parent before its children; ConfigError on an unknown task or a cycle."""
    key = "model.options.depends_on"
    for child, ps in parents.items():
        for name in [child, *ps]:
            if name not in tasks:
                raise ConfigError(f"{key}: unknown task {name!r}; tasks are: {', '.join(tasks)}")
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(task: str, path: list[str]) -> None:
        if state.get(task) == 2:
            return
        if state.get(task) == 1:
            raise ConfigError(f"{key}: the dependencies form a cycle: {' -> '.join([*path, task])}")
        state[task] = 1
        for p in parents.get(task, []):
            visit(p, [*path, task])
        state[task] = 2
        order.append(task)

    for task in tasks:
        visit(task, [])
    return order


@BACKBONES.register("dbmtl")
class DBMTL(Backbone):
    Options = DBMTLOptions

    def __init__(self, input_dim: int, task_names: Sequence[str], options: DBMTLOptions) -> None:
        super().__init__(input_dim, task_names, options)
        tasks = self.task_names
        given = options.depends_on if options.depends_on is not None else {t: tasks[:i] for i, t in enumerate(tasks)}
        self.parents = {t: list(given.get(t, [])) for t in tasks}
        self.order = dependency_order(tasks, self.parents)
        self.bottom = MLP(input_dim, options.bottom, options.activation, options.dropout, options.batch_norm)
        self.towers = ExpertBank(len(tasks), self.bottom.output_dim, options.tower, options.activation, options.dropout,
                                 options.batch_norm)
        width, out = self.towers.output_dim, options.relation[-1]
        self.relations = nn.ModuleDict({
            t: MLP(width + out * len(self.parents[t]), options.relation, options.activation, options.dropout, options.batch_norm)
            for t in tasks
        })
        self.output_dim = out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        towers = self.towers(self.bottom(x))  # (B, T, width)
        index = {t: i for i, t in enumerate(self.task_names)}
        out: dict[str, Tensor] = {}
        for t in self.order:
            parts = [towers[:, index[t]], *(out[p] for p in self.parents[t])]
            out[t] = self.relations[t](torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return {t: out[t] for t in self.task_names}


__all__ = ["DBMTL", "DBMTLOptions", "dependency_order"]
