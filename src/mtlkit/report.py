"""Terminal tables for results (rich), shared by the CLI commands."""

from __future__ import annotations

import math
from collections.abc import Mapping

from rich.console import Console
from rich.table import Table


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def metrics_table(title: str, splits: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Table:
    """Rows: split × task; columns: every metric any task reports."""
    columns: list[str] = []
    for tasks in splits.values():
        for metrics in tasks.values():
            columns += [m for m in metrics if m not in columns]
    table = Table(title=title)
    table.add_column("split")
    table.add_column("task")
    for column in columns:
        table.add_column(column, justify="right")
    for split, tasks in splits.items():
        for task, metrics in tasks.items():
            table.add_row(split, task, *(_fmt(metrics.get(c, "")) for c in columns))
    return table


def print_table(table: Table, console: Console | None = None) -> None:
    (console or Console()).print(table)


def gate_table(stats) -> Table:
    """Per gate: entropy, collapsed share and each expert's mean weight."""
    table = Table(title="gates (mean weight per expert; validation rows)")
    table.add_column("gate")
    table.add_column("entropy", justify="right")
    table.add_column("collapsed", justify="right")
    table.add_column("mean weight per expert")
    for s in stats.values():
        weights = " ".join(f"{w:.2f}" for w in s.mean_weight)
        table.add_row(s.gate, f"{s.mean_entropy:.3f}", f"{100 * s.collapsed_share:.0f}%", weights)
    return table
