"""Terminal tables (rich) for a doctor report; the JSON form is :meth:`DoctorReport.write_json`.

Example:
    >>> import io
    >>> from rich.console import Console
    >>> from mtlkit.doctor.findings import DoctorReport
    >>> console = Console(file=io.StringIO(), width=100, record=True)
    >>> print_report(DoctorReport([], {}), console, brief=True)
    >>> "no problems found" in console.export_text()
    True
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtlkit.doctor.findings import DoctorReport, Severity

STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow"}


def _rate_cell(entry: dict[str, Any]) -> str:
    if "rate" in entry:
        return f"{100 * entry['rate']:.2f}% of {entry['labelled']}"
    if "mean" in entry:
        return f"mean {entry['mean']:.4g} (nonzero {100 * entry['nonzero_share']:.0f}%) of {entry['labelled']}"
    if "class_shares" in entry:
        return " ".join(f"{s:.2f}" for s in entry["class_shares"]) + f" of {entry['labelled']}"
    return f"0 of {entry.get('rows', 0)}"


def label_rates_table(report: DoctorReport) -> Table:
    """Rows: tasks; columns: splits; binary cells show the positive rate among labelled rows."""
    rates: dict[str, dict[str, dict[str, Any]]] = report.stats.get("label_rates") or {}
    table = Table(title="label rates (labelled rows inside each task's space)")
    table.add_column("task")
    for split in rates:
        table.add_column(split, justify="right")
    tasks = list(dict.fromkeys(t for split in rates.values() for t in split))
    for task in tasks:
        table.add_row(task, *(_rate_cell(rates[s][task]) if task in rates[s] else "" for s in rates))
    return table


def correlation_table(report: DoctorReport) -> Table:
    stats = report.stats.get("label_correlation") or {"tasks": [], "matrix": []}
    table = Table(title=f"label correlation ({stats.get('split', 'train')})")
    table.add_column("")
    for name in stats["tasks"]:
        table.add_column(name, justify="right")
    for name, row in zip(stats["tasks"], stats["matrix"]):
        table.add_row(name, *("" if r is None else f"{r:.3f}" for r in row))
    return table


def data_table(report: DoctorReport) -> Table:
    """Per split: rows, duplicates, copies of training rows, the worst unseen share and leakage score."""
    duplicates = report.stats.get("duplicates") or {}
    unseen = report.stats.get("unseen") or {}
    table = Table(title="splits")
    for column in ("split", "source", "rows", "duplicates", "copies of train", "most unseen categories"):
        table.add_column(column, justify="left" if column in ("split", "source", "most unseen categories") else "right")
    for split, info in report.splits.items():
        dup = duplicates.get(split, {})
        worst = max((unseen.get(split) or {}).items(), key=lambda kv: kv[1]["share"], default=None)
        table.add_row(
            split, escape(str(info["source"])), str(info["rows"]),
            f"{dup.get('duplicates', 0)} ({100 * dup.get('share', 0):.1f}%)",
            str(dup["in_train"]) if "in_train" in dup else "",
            f"{worst[0]}: {100 * worst[1]['share']:.1f}%" if worst else "",
        )
    return table


def leakage_table(report: DoctorReport) -> Table:
    """The strongest single feature per task (AUC, or Spearman for regression): how far from the threshold."""
    table = Table(title="strongest single feature per task (leakage check)")
    for column in ("task", "feature", "score"):
        table.add_column(column, justify="right" if column == "score" else "left")
    table.add_column("metric")
    for task, entry in (report.stats.get("leakage") or {}).items():
        scores, centre = entry["scores"], 0.5 if entry["metric"] == "auc" else 0.0
        if scores:
            feature, score = max(scores.items(), key=lambda kv: abs(kv[1] - centre))
            table.add_row(task, feature, f"{score:.4f}", entry["metric"])
    return table


def hash_collision_table(report: DoctorReport) -> Table:
    """Per hashed feature: buckets, admitted values, and the share of values and rows that collide."""
    table = Table(title="hashed features (train): bucket collisions")
    for column in ("feature", "buckets", "admitted values", "occupied", "colliding values", "colliding rows", "uniform hashing"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for name, s in (report.stats.get("hash_collisions") or {}).items():
        table.add_row(name, str(s["buckets"]), f"{s['admitted']} of {s['values']}", str(s["occupied_buckets"]),
                      f"{100 * s['value_collision_share']:.1f}%", f"{100 * s['row_collision_share']:.1f}%",
                      f"{100 * s['expected_value_collision_share']:.1f}%")
    return table


def findings_table(report: DoctorReport) -> Table:
    table = Table(title="findings")
    table.add_column("severity")
    table.add_column("check")
    table.add_column("message", overflow="fold")
    for f in report.findings:
        table.add_row(f"[{STYLE[f.severity]}]{f.severity.value}[/]", f.check, escape(f.message))
    return table


def print_report(report: DoctorReport, console: Console, brief: bool = False) -> None:
    """Everything, or with ``brief`` (``train --doctor``) only the findings and the summary line."""
    if not brief:
        for table in (data_table(report), label_rates_table(report), correlation_table(report), leakage_table(report),
                      hash_collision_table(report)):
            if table.row_count:
                console.print(table)
    if report.findings:
        console.print(findings_table(report))
    errors, warnings = len(report.errors), len(report.warnings)
    if not report.findings:
        console.print("[green]doctor: no problems found[/]")
    else:
        style = "bold red" if errors else "yellow"
        console.print(f"[{style}]doctor: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}[/]")
