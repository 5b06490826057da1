"""Shared plumbing of the NLP benchmark scripts: run one config, keep its figures, print tables.

Each run is ``mtlkit.nlp.run.train_nlp_run`` on a config dict; a run whose ``summary.json``
already exists is read back instead of trained again, so an interrupted benchmark resumes where it
stopped (the trainer itself resumes an unfinished run from ``last.pt``).
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mtlkit.nlp.config import parse_nlp_config
from mtlkit.nlp.run import train_nlp_run


def run_config(raw: dict[str, Any], run_dir: Path, base: Path) -> dict:
    """Train ``raw`` (data paths relative to ``base``) into ``run_dir``; the summary, with wall time."""
    done = run_dir / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    config = parse_nlp_config(raw, str(run_dir)).resolve_paths(base)
    start = time.perf_counter()
    summary = train_nlp_run(config, run_dir, progress=False)
    summary["wall_seconds"] = time.perf_counter() - start
    done.write_text(json.dumps(summary, indent=1))
    print(f"  {run_dir.name}: {summary['wall_seconds']:.0f} s, test {json.dumps(summary['test'])}", flush=True)
    return summary


def cached_json(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s result, stored in ``path`` the first time (a re-run reads it back)."""
    if not path.exists():
        path.write_text(json.dumps(compute(), indent=1))
    return json.loads(path.read_text())


def write_csv(path: Path, records: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> None:
    """All records so far (rewritten after each seed: nothing is lost on a crash)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames or records[0]))
        writer.writeheader()
        writer.writerows(records)


def report(path: Path, table: str, footer: str) -> None:
    """The results table and its protocol line, printed and written to ``path`` (Markdown)."""
    path.write_text(table + "\n\n" + footer + "\n")
    print(table)
    print(footer)


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["cached_json", "markdown_table", "mean_std", "report", "run_config", "write_csv"]
