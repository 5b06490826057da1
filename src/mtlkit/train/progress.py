"""Where a training run is: a rich bar on a terminal, plain log lines everywhere else.

rich draws its bar only on a terminal, so a run whose output goes to a file (CI, ``nohup``, a
job scheduler) would print nothing until its first validation — half an hour and more for an
NLP epoch. Off a terminal (and outside Jupyter) :class:`LogLines` prints one line every
``train.log_every_seconds`` and at the end of every epoch::

    2026-01-05 14:02:11 epoch 1/2 step 120/500 (24%) | 1,920 samples/s | elapsed 1m02s | ETA epoch 3m17s, run 11m40s | loss click 0.4123 buy 0.2011

The ETA counts training steps only (validation comes on top). The losses are the running means
of the epoch so far; the trainer reads them back from the device only when a line is due (or the
bar is redrawn, every ``train.log_every`` steps): asking :meth:`EpochProgress.due` costs a clock
read, not a device sync.

Example:
    >>> import io
    >>> out = io.StringIO()  # not a terminal: plain lines
    >>> with epoch_progress(True, epoch=0, epochs=1, total=4, start=0, every_seconds=3600, stream=out) as bar:
    ...     for step in range(1, 5):
    ...         if bar.due(step):
    ...             bar.update(step, 32 * step, {"click": 0.5})
    >>> line = out.getvalue().strip()
    >>> " ".join(line.split()[2:6]), line.endswith("loss click 0.5000")   # one line, at the epoch's end
    ('epoch 1/1 step 4/4', True)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, Literal, TextIO


class EpochProgress:
    """The progress display of one epoch; this base shows nothing (``train.progress: false``)."""

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc) -> Literal[False]:
        return False

    def due(self, step: int) -> bool:
        """Whether an :meth:`update` with freshly synced losses is wanted after ``step`` (beyond ``log_every``)."""
        return False

    def update(self, step: int, samples: int, losses: Mapping[str, float]) -> None:
        """``step`` steps of the epoch done, ``samples`` rows trained since this display began."""


class RichBar(EpochProgress):
    """rich's progress bar: steps, elapsed, remaining, running losses (redrawn every ``log_every`` steps)."""

    def __init__(self, description: str, total: int, completed: int, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
            transient=False, console=Console(file=stream) if stream is not None else None,
        )
        self.task = self.progress.add_task(description, total=total, completed=completed, losses="")

    def __enter__(self) -> RichBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> Literal[False]:
        self.progress.__exit__(*exc)  # rich's Progress never suppresses an exception (returns None)
        return False

    def update(self, step: int, samples: int, losses: Mapping[str, float]) -> None:
        self.progress.update(self.task, completed=step, losses=format_losses(losses))


class LogLines(EpochProgress):
    """A plain line every ``every_seconds`` and at the epoch's end, flushed (a redirected stdout is block-buffered)."""

    def __init__(self, epoch: int, epochs: int, total: int, start: int, every_seconds: float, stream: TextIO | None = None,
                 clock=time.monotonic) -> None:
        self.epoch, self.epochs, self.total, self.start = epoch, epochs, total, start
        self.every, self.stream, self.clock = every_seconds, stream, clock
        self.began = self.last = clock()

    def due(self, step: int) -> bool:
        return step >= self.total or self.clock() - self.last >= self.every

    def update(self, step: int, samples: int, losses: Mapping[str, float]) -> None:
        if not self.due(step):  # called for the log_every interval too: print on time or at the end only
            return
        now = self.clock()
        self.last = now
        elapsed = max(now - self.began, 1e-9)
        steps_per_second = (step - self.start) / elapsed
        parts = [f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)",
                 f"{samples / elapsed:,.0f} samples/s", f"elapsed {format_seconds(elapsed)}"]
        if steps_per_second > 0 and step < self.total:
            left = self.total - step
            parts.append(f"ETA epoch {format_seconds(left / steps_per_second)}, "
                         f"run {format_seconds((left + (self.epochs - self.epoch - 1) * self.total) / steps_per_second)}")
        if losses:
            parts.append("loss " + format_losses(losses, sep=" "))
        stream = self.stream or sys.stdout
        stream.write(time.strftime("%Y-%m-%d %H:%M:%S ") + " | ".join(parts) + "\n")
        stream.flush()


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether a live bar can be drawn on ``stream`` (stdout by default): a terminal, or Jupyter."""
    from rich.console import Console

    console = Console(file=stream) if stream is not None else Console()
    return console.is_terminal or console.is_jupyter


def epoch_progress(enabled: bool, epoch: int, epochs: int, total: int, start: int, every_seconds: float,
                   stream: TextIO | None = None) -> EpochProgress:
    """The display for one epoch: nothing, the rich bar (terminal) or plain lines (anything else)."""
    if not enabled:
        return EpochProgress()
    if on_terminal(stream):
        return RichBar(f"epoch {epoch + 1}/{epochs}", total, start, stream)
    return LogLines(epoch, epochs, total, start, every_seconds, stream)


def format_losses(losses: Mapping[str, float], sep: str = "=") -> str:
    return " ".join(f"{name}{sep}{value:.4f}" for name, value in losses.items())


def format_seconds(seconds: float) -> str:
    """``59s``, ``3m07s``, ``2h05m``: short and sortable by eye.

    >>> format_seconds(59.4), format_seconds(187), format_seconds(7500)
    ('59s', '3m07s', '2h05m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def print_epoch(record: Mapping[str, Any], results: Mapping[str, Mapping[str, float]]) -> None:
    """One line per epoch: every task's validation metrics, and whether the epoch is the best so far."""
    from rich.console import Console  # (rich only when progress is shown)

    parts = []
    for task, metrics in results.items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "rows")
        parts.append(f"[bold]{task}[/] {shown}")
    mark = " [green]*best[/]" if record["improved"] else ""
    Console().print(f"epoch {record['epoch']} validation: " + " | ".join(parts) + mark, highlight=False, soft_wrap=True)  # one line in a log file


__all__ = ["EpochProgress", "LogLines", "RichBar", "epoch_progress", "format_seconds", "on_terminal", "print_epoch"]
