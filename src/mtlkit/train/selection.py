"""Turn validation results into the score that picks the best epoch (higher is better).

Example:
    >>> from mtlkit.tasks import Task
    >>> tasks = [Task(name="a", kind="binary"), Task(name="b", kind="binary", loss_weight=2.0)]
    >>> results = {"a": {"loss": 0.5, "auc": 0.8}, "b": {"loss": 0.25, "auc": 0.6}}
    >>> selection_score(results, tasks, "auc")
    0.7
    >>> selection_score(results, tasks, "loss")   # negated weighted loss sum
    -1.0
    >>> selection_score(results, tasks, "b/auc")
    0.6
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtlkit.errors import ConfigError
from mtlkit.metrics import METRICS

if TYPE_CHECKING:
    from mtlkit.protocols import TrainTask


def check_monitor(monitor: str, tasks: Sequence[TrainTask]) -> None:
    names = {t.name: t for t in tasks}
    if monitor == "loss":
        return
    if "/" in monitor:
        task, metric = monitor.split("/", 1)
        if task not in names:
            raise ConfigError(f"train.monitor: unknown task {task!r}")
        if metric != "loss" and metric not in (names[task].metrics or []):
            raise ConfigError(f"train.monitor: task {task!r} does not compute {metric!r}")
        return
    if not any(monitor in (t.metrics or []) for t in tasks):
        raise ConfigError(f"train.monitor: no task computes metric {monitor!r}")


def _oriented(metric: str, value: float) -> float:
    if metric == "loss":
        return -value
    return value if METRICS.get(metric).higher_is_better else -value


def selection_score(results: dict[str, dict[str, float]], tasks: Sequence[TrainTask], monitor: str) -> float:
    """The run-level score: NaN-free, higher is better."""
    if monitor == "loss":
        return -sum(t.loss_weight * results[t.name]["loss"] for t in tasks if t.name in results)
    if "/" in monitor:
        task, metric = monitor.split("/", 1)
        return _oriented(metric, results[task][metric])
    values = [_oriented(monitor, results[t.name][monitor]) for t in tasks if monitor in results.get(t.name, {})]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("-inf")


def task_score(results: dict[str, dict[str, float]], task: TrainTask, monitor: str) -> float:
    """The same score restricted to one task (for per-task selection of independent models)."""
    metric = monitor.split("/", 1)[-1]
    if metric != "loss" and metric in results[task.name]:
        return _oriented(metric, results[task.name][metric])
    return -results[task.name]["loss"]
