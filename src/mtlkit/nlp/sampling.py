"""Task sampling: which task's batch each training step holds, when every task has its own data.

All strategies (``sampling: {strategy: …}`` in an NLP run config) in one place. ``K`` tasks,
``n_i`` training examples of task ``i``, ``b_i = ⌈n_i / batch_size⌉`` its batches, ``S`` the
steps of an epoch (``steps``; default ``Σ b_i``, for ``round`` ``max b_i``):

================  ==========================================================================
strategy          a step holds / task ``i`` is drawn with probability
================  ==========================================================================
round             one batch of *every* task (what gradient balancers need: they compare the
                  tasks' gradients within a step). Small tasks cycle through fresh shuffles.
proportional      one batch of one task; every batch of every task exactly once per epoch in a
                  shuffled order (MT-DNN, Liu et al. 2019, Algorithm 1): ``p_i = b_i / Σ_j b_j``.
uniform           ``p_i = 1 / K`` (i.i.d. per step).
temperature       ``p_i ∝ n_i^{1/T}`` (Arivazhagan et al. 2019; T = 1 proportional, T → ∞
                  uniform), then capped: no task above ``cap`` of the steps, the excess shared
                  by the others in proportion to their ``p_i`` (needs ``cap ≥ 1/K``).
annealed          ``p_i ∝ n_i^α``, ``α = 1 − 0.8·(e − 1)/(E − 1)`` at epoch ``e = 1…E``
                  (Stickland & Murray, ICML 2019, §4: proportional first, nearly uniform last).
auxiliary_first   MT-DNN's ``mix_opt`` > 0: each epoch, the auxiliary tasks' batches in a
                  shuffled order first, then the ``main`` tasks' batches, so every epoch ends on
                  the main task(s). ``auxiliary_ratio`` r keeps only ``r · (main batches)`` of
                  the auxiliary batches, drawn without replacement (MT-DNN's extra_task_ratio).
stages            ERNIE 2.0's continual multi-task learning (Sun et al., AAAI 2020, §3.2):
                  ``stages`` in order, each ``{tasks, epochs, replay}`` introducing tasks
                  while the earlier stages' tasks keep a share ``replay`` of the steps
                  (i.i.d.; ``p_i ∝ b_i`` within the new and within the earlier tasks; tasks of
                  later stages 0). The last stage runs on to the end of training.
================  ==========================================================================

``cap`` applies to every i.i.d. strategy (uniform, temperature, annealed). A task drawn more
often than it has batches cycles through new shuffles of its data; a task drawn less often
sees part of it. Everything is a function of ``(seed, epoch)``: the order of steps, the rows of
each batch, and — through :func:`step_generator` — the random per-batch transforms of task
kinds (masked-LM masking), so a run resumed at any step continues exactly as the
uninterrupted run (no sampler state is saved).

Example:
    >>> import torch
    >>> from mtlkit.data.batch import EncodedTable
    >>> def table(n, task):
    ...     return EncodedTable({"x": torch.zeros(n, 1)}, {task: torch.zeros(n)}, {task: torch.ones(n, dtype=torch.bool)})
    >>> tables = {"big": table(80, "big"), "small": table(20, "small")}
    >>> probabilities(SamplingSpec(strategy="temperature", temperature=2.0), {"big": 80, "small": 20})
    {'big': 0.6666666666666666, 'small': 0.3333333333333333}
    >>> sampler = TaskSampler(tables, batch_size=10, spec=SamplingSpec(strategy="auxiliary_first", main=["small"]))
    >>> [step[0].tasks[0] for step in sampler.epoch(0)][-3:]
    ['big', 'small', 'small']
    >>> len(TaskSampler(tables, batch_size=10, spec=SamplingSpec(strategy="round")))
    8
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mtlkit.data.batch import Batch, BatchSource, EncodedTable
from mtlkit.errors import ConfigError

Strategy = Literal["round", "proportional", "uniform", "temperature", "annealed", "auxiliary_first", "stages"]
IID = ("uniform", "temperature", "annealed")
Transform = Callable[[Batch, torch.Generator], Batch]


class StageSpec(BaseModel):
    """One stage of ``strategy: stages``: the tasks it introduces, for how many epochs, and the
    share of steps the earlier stages' tasks keep (0: sequential fine-tuning, which forgets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tasks: list[str] = Field(min_length=1)
    epochs: int = Field(default=1, ge=1)
    replay: float = Field(default=0.3, ge=0.0, lt=1.0)


class SamplingSpec(BaseModel):
    """``sampling:`` of an NLP run; ``strategy`` None picks ``round`` for gradient balancers, else ``proportional``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    strategy: Strategy | None = None
    temperature: float = Field(default=2.0, gt=0.0)
    cap: float | None = Field(default=None, gt=0.0, le=1.0)
    steps: int | None = Field(default=None, ge=1)
    main: list[str] | None = None
    auxiliary_ratio: float | None = Field(default=None, gt=0.0)
    stages: list[StageSpec] | None = None

    @model_validator(mode="after")
    def _only_where_used(self) -> SamplingSpec:
        used_by = {"temperature": ("temperature",), "cap": IID, "steps": (*IID, "round", "stages"),
                   "main": ("auxiliary_first",), "auxiliary_ratio": ("auxiliary_first",), "stages": ("stages",)}
        for key, strategies in used_by.items():
            if key in self.model_fields_set and self.strategy not in strategies:
                raise ValueError(f"`{key}` is only used by strategy {' / '.join(strategies)}")
        if self.strategy == "stages" and not self.stages:
            raise ValueError("strategy stages needs `stages`: [{tasks: [...], epochs: N, replay: share}, ...]")
        if self.stages:
            named = [t for stage in self.stages for t in stage.tasks]
            twice = next((t for t in named if named.count(t) > 1), None)
            if twice is not None:
                raise ValueError(f"stages: task {twice!r} is introduced twice")
        return self

    def stage_of(self, epoch: int) -> int:
        """The 0-based stage in force at 0-based ``epoch`` (the last one runs on)."""
        assert self.stages
        end = 0
        for i, stage in enumerate(self.stages):
            end += stage.epochs
            if epoch < end:
                return i
        return len(self.stages) - 1


def seed_key(*parts: int | str) -> int:
    """A generator seed from a position such as ``(seed, epoch, step)``; strings (task names) hash stably."""
    key = 0
    for part in parts:
        key = (key * 1_000_003 + (zlib.crc32(part.encode()) if isinstance(part, str) else int(part))) % (2**63 - 1)
    return key


def step_generator(seed: int, epoch: int, step: int, slot: int = 0) -> torch.Generator:
    """The generator of the batch at ``slot`` of ``step`` in ``epoch``: a pure function of its position."""
    return torch.Generator().manual_seed(seed_key(seed, 7, epoch, step, slot))


def capped(p: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Clip shares at ``cap`` and give the excess to the uncapped tasks in proportion (water-filling)."""
    p = p / p.sum()
    if cap is None:
        return p
    if cap * p.numel() < 1.0 - 1e-9:
        raise ConfigError(f"sampling.cap: {cap} is below 1/{p.numel()}, the share every task would need")
    fixed = torch.zeros_like(p, dtype=torch.bool)
    for _ in range(p.numel()):
        over = (p > cap + 1e-12) & ~fixed
        if not over.any():
            break
        fixed |= over
        free = ~fixed
        p = torch.where(fixed, torch.full_like(p, cap), p)
        rest = 1.0 - cap * fixed.sum()
        p[free] = p[free] / p[free].sum() * rest if p[free].sum() > 0 else rest / free.sum()
    return p


def probabilities(spec: SamplingSpec, sizes: Mapping[str, int], epoch: int = 0, epochs: int = 1) -> dict[str, float]:
    """Per-step task probabilities of an i.i.d. strategy at 0-based ``epoch`` of ``epochs``."""
    n = torch.tensor([float(s) for s in sizes.values()], dtype=torch.float64)
    if spec.strategy == "uniform":
        p = torch.ones_like(n)
    elif spec.strategy == "temperature":
        p = n ** (1.0 / spec.temperature)
    elif spec.strategy == "annealed":
        alpha = 1.0 - 0.8 * epoch / (epochs - 1) if epochs > 1 else 1.0
        p = n**alpha
    else:
        raise ValueError(f"strategy {spec.strategy!r} does not draw tasks i.i.d.")
    return dict(zip(sizes, capped(p, spec.cap).tolist()))


class TaskSampler(BatchSource):
    """A batch source for :class:`mtlkit.train.Trainer`: ``len()`` steps per epoch, ``epoch(e, start_step)``.

    ``transforms`` maps a task to a per-batch transform ``(batch, generator) → batch``, called with
    :func:`step_generator` of the batch's position (masked-LM masking).
    """

    def __init__(self, tables: Mapping[str, EncodedTable], batch_size: int, spec: SamplingSpec = SamplingSpec(),
                 seed: int = 0, epochs: int = 1, transforms: Mapping[str, Transform] | None = None) -> None:
        if not tables:
            raise ValueError("TaskSampler needs at least one task table")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.names = list(tables)
        self.tables = dict(tables)
        self.batch_size = batch_size
        self.spec = spec if spec.strategy is not None else spec.model_copy(update={"strategy": "proportional"})
        self.seed = seed
        self.epochs = epochs
        self.transforms = dict(transforms or {})
        self.sizes = {name: len(t) for name, t in self.tables.items()}
        self._orders: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}
        empty = [name for name, size in self.sizes.items() if size == 0]
        if empty:
            raise ConfigError(f"task {empty[0]!r} has no training rows")
        self.batches = [-(-size // batch_size) for size in self.sizes.values()]
        if self.spec.strategy == "auxiliary_first":
            main = self.spec.main or self.names[:1]
            unknown = [m for m in main if m not in self.tables]
            if unknown:
                raise ConfigError(f"sampling.main: unknown task {unknown[0]!r}")
            self.main = [self.names.index(m) for m in main]

    def __len__(self) -> int:
        strategy = self.spec.strategy
        if strategy == "round":
            return self.spec.steps or max(self.batches)
        if strategy == "auxiliary_first":
            main = sum(self.batches[i] for i in self.main)
            auxiliary = sum(self.batches) - main
            if self.spec.auxiliary_ratio is not None:
                auxiliary = min(auxiliary, int(self.spec.auxiliary_ratio * main))
            return main + auxiliary
        return self.spec.steps or sum(self.batches)

    def plan(self, epoch: int) -> list[list[int]]:
        """The task indices of every step of ``epoch`` (a pure function of ``(seed, epoch)``)."""
        strategy = self.spec.strategy
        generator = torch.Generator().manual_seed(seed_key(self.seed, 11, epoch))
        if strategy == "round":
            return [list(range(len(self.names)))] * len(self)
        if strategy == "proportional":
            slots = torch.cat([torch.full((b,), i) for i, b in enumerate(self.batches)])
            order = slots[torch.randperm(len(slots), generator=generator)]
        elif strategy == "auxiliary_first":
            main = set(self.main)
            auxiliary = torch.cat([torch.full((b,), i) for i, b in enumerate(self.batches) if i not in main] or [torch.zeros(0, dtype=torch.long)])
            auxiliary = auxiliary[torch.randperm(len(auxiliary), generator=generator)][: len(self) - sum(self.batches[i] for i in main)]
            mains = torch.cat([torch.full((self.batches[i],), i) for i in self.main])
            order = torch.cat([auxiliary, mains[torch.randperm(len(mains), generator=generator)]])
        elif strategy == "stages":
            order = torch.multinomial(self.stage_probabilities(epoch), len(self), replacement=True, generator=generator)
        else:
            p = probabilities(self.spec, self.sizes, epoch, self.epochs)
            order = torch.multinomial(torch.tensor(list(p.values())), len(self), replacement=True, generator=generator)
        return [[int(i)] for i in order.tolist()]

    def stage_probabilities(self, epoch: int) -> torch.Tensor:
        """``strategy: stages``: per-task step probabilities at ``epoch`` (module docstring)."""
        assert self.spec.stages
        current = self.spec.stage_of(epoch)
        new = set(self.spec.stages[current].tasks)
        old = {t for stage in self.spec.stages[:current] for t in stage.tasks}
        replay = self.spec.stages[current].replay if old else 0.0
        b = torch.tensor([float(x) for x in self.batches], dtype=torch.float64)
        is_new = torch.tensor([n in new for n in self.names])
        is_old = torch.tensor([n in old for n in self.names])
        p = torch.zeros_like(b)
        p[is_new] = (1.0 - replay) * b[is_new] / b[is_new].sum()
        if replay > 0:
            p[is_old] = replay * b[is_old] / b[is_old].sum()
        return p

    def _order(self, task: int, epoch: int, cycle: int) -> torch.Tensor:
        cached = self._orders.get(task)
        if cached is None or cached[0] != (epoch, cycle):  # one permutation per (task, epoch, cycle), not per step
            generator = torch.Generator().manual_seed(seed_key(self.seed, 13, epoch, task, cycle))
            cached = self._orders[task] = ((epoch, cycle), torch.randperm(self.sizes[self.names[task]], generator=generator))
        return cached[1]

    def _batch(self, task: int, epoch: int, position: int) -> Batch:
        cycle, step = divmod(position, self.batches[task])
        rows = self._order(task, epoch, cycle)[step * self.batch_size : (step + 1) * self.batch_size]
        return self.tables[self.names[task]].take(rows)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[list[Batch]]:
        seen = [0] * len(self.names)
        for step, tasks in enumerate(self.plan(epoch)):
            positions = []
            for task in tasks:
                positions.append(seen[task])
                seen[task] += 1
            if step < start_step:
                continue
            batches = []
            for slot, (task, position) in enumerate(zip(tasks, positions)):
                batch = self._batch(task, epoch, position)
                transform = self.transforms.get(self.names[task])
                if transform is not None:
                    batch = transform(batch, step_generator(self.seed, epoch, step, slot))
                batches.append(batch)
            yield batches


__all__ = ["SamplingSpec", "StageSpec", "TaskSampler", "capped", "probabilities", "seed_key", "step_generator"]
