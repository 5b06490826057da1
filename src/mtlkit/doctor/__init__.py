"""Data doctor: check a run's data before training (``mtlkit doctor CONFIG``, ``mtlkit train --doctor``).

Checks label rates, label correlation, task-space consistency, invalid labels, NaN/inf per
column, single-feature leakage, unseen categories, duplicated rows and (given a time column)
time overlap between splits; errors vs warnings as documented in :mod:`mtlkit.doctor.findings`.

Example:
    >>> import pyarrow as pa
    >>> from mtlkit.data.schema import SchemaSpec
    >>> from mtlkit.tasks import Task
    >>> train = pa.table({"price": [float(i) for i in range(40)], "click": [0, 1] * 20})
    >>> spec = SchemaSpec.model_validate({"numeric": [{"name": "price"}]})
    >>> report = diagnose({"train": train}, [Task(name="click", kind="binary")], spec)
    >>> report.findings, report.exit_code()
    ([], 0)
"""

from mtlkit.doctor.findings import CheckResult, DoctorReport, Finding, Severity, Thresholds
from mtlkit.doctor.report import print_report
from mtlkit.doctor.runner import diagnose, diagnose_config, training_blockers

__all__ = [
    "CheckResult",
    "DoctorReport",
    "Finding",
    "Severity",
    "Thresholds",
    "diagnose",
    "diagnose_config",
    "print_report",
    "training_blockers",
]
