"""Run every check of the data doctor on a run's splits and collect one report.

Example:
    >>> import pyarrow as pa
    >>> from mtlkit.data.schema import SchemaSpec
    >>> from mtlkit.tasks import Task
    >>> train = pa.table({"price": [1.0, 2.0, float("inf"), 4.0], "click": [0, 1, 0, 2]})
    >>> spec = SchemaSpec.model_validate({"numeric": [{"name": "price"}]})
    >>> report = diagnose({"train": train}, [Task(name="click", kind="binary")], spec, {"train": "t.csv"})
    >>> [(f.severity.value, f.check) for f in report.findings]   # errors first
    [('error', 'label_values'), ('warning', 'label_rates'), ('warning', 'feature_values')]
    >>> report.findings[0].message
    "t.csv: label column 'click' of task 'click', data row 4: value 2.0 (expected 0 or 1); 1 invalid row (25.0%)"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from mtlkit.data.schema import SchemaSpec
from mtlkit.doctor import checks, hashing, target_leakage
from mtlkit.doctor.findings import CheckResult, DoctorReport, Finding, Severity, Thresholds
from mtlkit.doctor.frame import SplitTables
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import Task

if TYPE_CHECKING:
    from mtlkit.config import RunConfig
    from mtlkit.run import PreparedData


def diagnose(
    tables: Mapping[str, pa.Table | None],
    tasks: Sequence[Task],
    features: SchemaSpec,
    names: Mapping[str, str] | None = None,
    time_column: str | None = None,
    thresholds: Thresholds = Thresholds(),
) -> DoctorReport:
    """Check ``tables`` (``train`` plus optional ``validation``/``test``); ``names`` are their sources."""
    data = SplitTables(tables, names)
    if "train" not in data.tables:
        raise ConfigError("the doctor needs a train split")
    results: dict[str, CheckResult] = {
        "label_values": checks.check_label_values(data, tasks),
        "label_rates": checks.check_label_rates(data, tasks, thresholds),
        "label_correlation": checks.check_label_correlation(data, tasks, thresholds),
        "consistency": checks.check_consistency(data, tasks),
        "feature_values": checks.check_feature_values(data, features),
        "leakage": checks.check_leakage(data, tasks, features, thresholds),
        "unseen": checks.check_unseen(data, features, thresholds),
        "duplicates": checks.check_duplicates(data, thresholds),
        "hash_collisions": hashing.check_hash_collisions(data, features, thresholds),
        "target_leakage": target_leakage.check_target_leakage(data, tasks, features),
    }
    if time_column:
        results["time_overlap"] = checks.check_time_overlap(data, time_column)
    findings = [f for r in results.values() for f in r.findings]
    findings.sort(key=lambda f: f.severity is not Severity.ERROR)  # stable: errors first, check order kept
    splits = {s: {"source": data.source(s), "rows": data.rows(s)} for s in data.splits}
    return DoctorReport(findings, {name: r.stats for name, r in results.items()}, splits)


def training_blockers(tables: Mapping[str, pa.Table | None], tasks: Sequence[Task],
                      names: Mapping[str, str] | None = None) -> list[Finding]:
    """The doctor's hard errors about labels and weights, which ``mtlkit train`` refuses to train on.

    Invalid labels; non-numeric labels, masks or weights; NaN/inf/negative weights; a task without
    a labelled row, or with one class only, in train. The same checks as :func:`diagnose`, without
    the slower data-quality ones (leakage, duplicates, unseen categories: ``--doctor``).
    """
    data = SplitTables(tables, names)
    results = (checks.check_label_values(data, tasks), checks.check_label_rates(data, tasks, Thresholds()))
    return [f for result in results for f in result.findings if f.severity is Severity.ERROR]


def diagnose_config(
    config: RunConfig, time_column: str | None = None, thresholds: Thresholds = Thresholds()
) -> tuple[PreparedData, DoctorReport]:
    """Read the config's splits (as training would) and check them; the data is returned for reuse."""
    from mtlkit.run import check_columns, prepare_data

    prepared = prepare_data(config)
    check_columns(prepared)  # a missing column is bad input (exit 2), not a finding
    extra = [f.name for f in getattr(prepared.features, "bias", [])]
    for split, table in (("train", prepared.train), ("validation", prepared.validation), ("test", prepared.test)):
        missing = [c for c in extra if table is not None and c not in table.column_names]
        if missing:
            raise DataError(f"{prepared.names[split]}: missing column {missing[0]!r}")
    tables = {"train": prepared.train, "validation": prepared.validation, "test": prepared.test}
    return prepared, diagnose(tables, prepared.tasks, prepared.features, prepared.names, time_column, thresholds)
