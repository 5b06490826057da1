"""Batches when each task has its own dataset (MT-DNN style heterogeneous training).

Two schedules, both deterministic functions of ``(seed, epoch)`` so interrupted runs resume
exactly:

* ``"round"`` — every step holds one batch of *each* task (what gradient balancers need, since
  they compare the tasks' gradients within a step). An epoch lasts as many steps as the
  largest task has batches; smaller tasks cycle through fresh shuffles.
* ``"single"`` — every step holds one batch of *one* task; an epoch visits every batch of every
  task once, in a shuffled order, so tasks are sampled in proportion to their size (MT-DNN).

Example:
    >>> import torch
    >>> from mtlkit.data.batch import EncodedTable
    >>> def table(n, task):
    ...     return EncodedTable({"numeric": torch.zeros(n, 1)}, {task: torch.zeros(n)}, {task: torch.ones(n, dtype=torch.bool)})
    >>> source = PerTaskBatches({"a": table(10, "a"), "b": table(4, "b")}, batch_size=2, schedule="round")
    >>> len(source), [[b.tasks[0] for b in step] for step in source.epoch(0)][:2]
    (5, [['a', 'b'], ['a', 'b']])
    >>> single = PerTaskBatches({"a": table(10, "a"), "b": table(4, "b")}, batch_size=2, schedule="single")
    >>> len(single), sorted(step[0].tasks[0] for step in single.epoch(0))
    (7, ['a', 'a', 'a', 'a', 'a', 'b', 'b'])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal

import torch

from mtlkit.data.batch import Batch, BatchSource, EncodedTable


class PerTaskBatches(BatchSource):
    def __init__(
        self,
        tables: Mapping[str, EncodedTable],
        batch_size: int,
        schedule: Literal["round", "single"] = "round",
        seed: int = 0,
    ) -> None:
        if not tables:
            raise ValueError("PerTaskBatches needs at least one task table")
        for name, table in tables.items():
            if name not in table.targets:
                raise ValueError(f"the table given for task {name!r} has no labels for it")
        self.tables = dict(tables)
        self.batch_size = batch_size
        self.schedule = schedule
        self.seed = seed
        self.sizes = {name: -(-len(t) // batch_size) for name, t in self.tables.items()}

    def __len__(self) -> int:
        return max(self.sizes.values()) if self.schedule == "round" else sum(self.sizes.values())

    def _order(self, task_index: int, epoch: int, cycle: int) -> torch.Tensor:
        n = len(self.tables[list(self.tables)[task_index]])
        key = ((self.seed * 1_000_003 + epoch) * 1009 + task_index) * 10_007 + cycle
        return torch.randperm(n, generator=torch.Generator().manual_seed(key))

    def _batch(self, task_index: int, epoch: int, position: int) -> Batch:
        name = list(self.tables)[task_index]
        cycle, step = divmod(position, self.sizes[name])
        order = self._order(task_index, epoch, cycle)
        return self.tables[name].take(order[step * self.batch_size : (step + 1) * self.batch_size])

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[list[Batch]]:
        if self.schedule == "round":
            for step in range(start_step, len(self)):
                yield [self._batch(i, epoch, step) for i in range(len(self.tables))]
            return
        # One task per step: a shuffled sequence of (task, position) covering every batch once.
        plan = torch.cat([torch.full((size,), i) for i, size in enumerate(self.sizes.values())])
        plan = plan[torch.randperm(len(plan), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))]
        seen = [0] * len(self.tables)
        for step, task_index in enumerate(plan.tolist()):
            position = seen[task_index]
            seen[task_index] += 1
            if step >= start_step:
                yield [self._batch(task_index, epoch, position)]
