"""What the trainer iterates, what it hears back, and what it returns.

- :class:`~mtlkit.data.batch.BatchSource` (re-exported): ``len()`` steps per epoch, each step a
  list of batches (one for a shared table, one per task for per-task datasets); an epoch's order
  is a function of the seed and the epoch number, so a resumed run sees the same batches.
- :class:`Callback`: hooks that see the step's losses, checkpoints, epoch records and the end of
  training — gate and gradient diagnostics (:mod:`mtlkit.diagnostics`) are callbacks the run
  passes in, so the trainer imports none of them.
- :class:`FitResult`: what :meth:`~mtlkit.train.Trainer.fit` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mtlkit.data.batch import BatchSource

if TYPE_CHECKING:  # the trainer imports this module
    from mtlkit.train.trainer import Trainer


class Callback:
    """Hooks into training; a callback may add entries to the epoch record before it is written."""

    def on_step_losses(self, trainer: Trainer, global_step: int, losses: Mapping[str, Tensor]) -> None:
        """The step's task losses (graphs attached), before the balancer's backward."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        """A checkpoint is about to be written: flush what must survive a resume."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], validation: Any) -> None:
        """After validation (``validation``: what :meth:`Trainer.fit` was given); may add to ``record``."""

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        """Training is over and the model holds its best weights."""


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: dict[str, int]
    best_results: dict[str, dict[str, float]]
    stopped_early: bool
    seconds: float
    train_samples: int = 0
    train_seconds: float = 0.0  # the training loop alone, without evaluation or checkpoints
    precision: str = "fp32"  # what train.precision resolved to ("auto": bf16 where native)


__all__ = ["BatchSource", "Callback", "FitResult"]
