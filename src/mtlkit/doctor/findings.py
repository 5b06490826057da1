"""What the data doctor reports: findings with a severity, statistics, thresholds, exit code.

Severity policy (the choice a demanding user would make; documented in ``mtlkit doctor --help``):

- **error** — training would be wrong or its metrics meaningless: invalid label values, NaN/inf
  where not allowed (sample weights), non-numeric labels/weights/masks, a task with no labelled
  row (or only one class) in train, leakage (one feature predicts a label almost perfectly),
  time overlap between train and validation/test.
- **warning** — worth a look, but real logs have it and training handles it: extreme or
  unreliable label rates, identical labels of two tasks, task-space consistency violations
  (the mask already keeps those rows out of the task's loss and metrics; e.g. KuaiRand's
  auto-played videos have play time without a click), NaN/inf in features (filled and
  flagged by the schema), many unseen categories, duplicated rows. ``--strict`` makes
  every warning a hard error.

Example:
    >>> report = DoctorReport([Finding("labels", Severity.ERROR, "t.csv: label column 'y' ...")], {})
    >>> report.exit_code(), len(report.errors), report.to_dict()["summary"]
    (1, 1, {'errors': 1, 'warnings': 0})
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One problem; ``message`` is a single line naming the file, task, column and first row."""

    check: str
    severity: Severity
    message: str
    split: str | None = None
    task: str | None = None
    column: str | None = None
    count: int | None = None
    share: float | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        data["severity"] = self.severity.value
        return data


@dataclass(frozen=True)
class Thresholds:
    """Where a statistic becomes a finding; the defaults are the CLI's."""

    leakage_auc: float = 0.99  # single-feature AUC ≥ this (or ≤ 1 − this) is leakage
    leakage_correlation: float = 0.99  # |Spearman| for regression labels
    leakage_rows: int = 1_000_000  # rows sampled per task for the numeric AUC (seeded)
    min_class_rows: int = 10  # fewer positives or negatives: rate warning, no leakage AUC
    unseen_share: float = 0.2  # validation/test rows whose category train never saw
    duplicate_share: float = 0.01  # exact duplicate rows within a split, or of a train row
    identical_labels: float = 0.999  # |correlation| between two tasks' labels
    hash_collision_share: float = 0.1  # training rows of a hashed feature whose bucket holds another value


@dataclass
class CheckResult:
    """What one check returns: its findings and JSON-ready statistics."""

    findings: list[Finding] = field(default_factory=list)
    stats: Any = None


@dataclass
class DoctorReport:
    findings: list[Finding]
    stats: dict[str, Any]  # check name -> statistics
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> source, rows

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    def exit_code(self, strict: bool = False) -> int:
        """1 on hard errors (with ``strict``: on any finding), else 0."""
        return 1 if self.errors or (strict and self.findings) else 0

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "summary": {"errors": len(self.errors), "warnings": len(self.warnings)},
            "splits": self.splits,
            "findings": [f.to_dict() for f in self.findings],
            "stats": self.stats,
        })

    def write_json(self, path: str | Path, **extra: Any) -> None:
        """Write atomically (a temporary file, then rename): a failed write never leaves half a report."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({**_jsonable(extra), **self.to_dict()}, indent=1, allow_nan=False))
            tmp.replace(path)
        except OSError as error:
            raise ConfigError(f"{path}: cannot write the report: {error.strerror or error}") from None


def _jsonable(value: Any) -> Any:
    """NaN/inf become null (strict JSON), numpy scalars plain numbers, enums their values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
