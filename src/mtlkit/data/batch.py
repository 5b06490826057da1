"""Batches and columnar tables: every batch is an index slice of column tensors.

A :class:`Batch` carries model inputs by name (``categorical``/``numeric`` for tabular data, plus
``seq:<name>`` padded ``(B, max_len)`` id sequences and ``bias`` ``(B, n_bias)`` selection-bias ids;
``input_ids``/``attention_mask`` for text) and, per task, the targets, sample weights and the
boolean mask of rows that count. A batch may hold labels for all tasks (one shared table) or for
one task only (one dataset per task, as in MT-DNN); the trainer handles both the same way.

Example:
    >>> import torch
    >>> table = EncodedTable(
    ...     inputs={"numeric": torch.arange(10.0).reshape(5, 2)},
    ...     targets={"y": torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])},
    ...     masks={"y": torch.ones(5, dtype=torch.bool)},
    ... )
    >>> batch = table.take(torch.tensor([4, 0]))
    >>> batch.inputs["numeric"].tolist(), batch.targets["y"].tolist(), batch.tasks
    ([[8.0, 9.0], [0.0, 1.0]], [1.0, 0.0], ('y',))

    Any input with the row dimension first slices the same way, e.g. a padded history:

    >>> table.inputs["seq:hist"] = torch.arange(15).reshape(5, 3)
    >>> table.subset(torch.tensor([1])).take(slice(0, 1)).inputs["seq:hist"].tolist()
    [[3, 4, 5]]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor


def _take(columns: dict[str, Tensor], index: Tensor | slice) -> dict[str, Tensor]:
    if isinstance(index, Tensor) and index.dim() == 1 and index.dtype in (torch.int64, torch.int32):
        # a row gather: index_select is ~3x faster than advanced indexing for a 1024-row batch
        return {name: column.index_select(0, index) for name, column in columns.items()}
    return {name: column[index] for name, column in columns.items()}


@dataclass
class Batch:
    """Inputs and per-task supervision for one optimisation step (or part of one)."""

    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]
    masks: dict[str, Tensor]
    weights: dict[str, Tensor] = field(default_factory=dict)
    #: Per task whose loss compares rows of a group (pairwise, listwise, JRC): the group ids.
    groups: dict[str, Tensor] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.targets)

    @property
    def size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def to(self, device: torch.device | str) -> Batch:
        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device, non_blocking=True) for k, v in d.items()}

        return Batch(move(self.inputs), move(self.targets), move(self.masks), move(self.weights), move(self.groups))


@dataclass
class EncodedTable:
    """Encoded columns of one split, held as tensors with the row dimension first.

    ``extras`` holds columns that are neither inputs nor targets but are needed at evaluation
    time, such as the group ids of GAUC.
    """

    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]
    masks: dict[str, Tensor]
    weights: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)
    groups: dict[str, Tensor] = field(default_factory=dict)  # task → group ids, for ranking losses

    def __post_init__(self) -> None:
        lengths = {t.shape[0] for group in (self.inputs, self.targets, self.masks, self.weights, self.groups) for t in group.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of an EncodedTable differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.targets)

    def take(self, index: Tensor | slice) -> Batch:
        """Rows at ``index`` (an index tensor or a slice) as one batch."""
        return Batch(_take(self.inputs, index), _take(self.targets, index), _take(self.masks, index), _take(self.weights, index),
                     _take(self.groups, index))

    def subset(self, index: Tensor) -> EncodedTable:
        """A new table of the rows at ``index`` (used for seeded splits)."""
        return EncodedTable(
            _take(self.inputs, index), _take(self.targets, index), _take(self.masks, index),
            _take(self.weights, index), _take(self.extras, index), _take(self.groups, index),
        )

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> TableBatches:
        return TableBatches(self, batch_size=batch_size, shuffle=shuffle, seed=seed)


class BatchSource:
    """What the trainer iterates: ``len()`` steps per epoch, each step a list of batches.

    ``world_size``: the number of data-parallel ranks a source already shards its rows for
    (streamed row groups); None for a source the trainer shards (each rank keeps ``rank::world``).
    """

    world_size: int | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[list[Batch]]:
        raise NotImplementedError


class TableBatches(BatchSource):
    """Batches of one table, one epoch at a time, restartable at any step.

    The shuffle order of epoch ``e`` depends only on ``(seed, e)``, so an interrupted run
    resumes at the same batch with the same order: no iterator state has to be saved.
    Each training step is a list of batches (here always one) — see :class:`Batch`.
    """

    def __init__(self, table: EncodedTable, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.table = table
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.table) // self.batch_size)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[list[Batch]]:
        n = len(self.table)
        order = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=generator)
        for step in range(start_step, len(self)):
            lo, hi = step * self.batch_size, min(n, (step + 1) * self.batch_size)
            yield [self.table.take(slice(lo, hi) if order is None else order[lo:hi])]
