"""Optional MLflow tracking of a study: one MLflow run per trial and final run, plus the report.

``tracking: {mlflow: true}`` logs to a local store under the study directory: the SQLite file
``<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts`` (MLflow 3 put its ``./mlruns`` file
store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; a ``file:`` URI
still works with that variable set); ``tracking: {mlflow: URI}`` logs to any tracking URI MLflow takes. Each run logs its
parameters (arm, phase, the trial's search values), every epoch's validation metrics (as
``val/<task>/<metric>`` at step = epoch) and the study objective; the study's HTML report is
logged as an artifact of a ``report`` run. Without ``tracking`` nothing is imported.

Example:
    >>> flatten_record({"epoch": 2, "val/y1/rmse": 0.5, "improved": True, "lr": 0.001})
    {'val/y1/rmse': 0.5, 'lr': 0.001}
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mtlkit.study.arms import Study


def flatten_record(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of an epoch record, without its counters."""
    return {k: float(v) for k, v in record.items()
            if k not in ("epoch", "step") and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}


def tracking_uri(study: Study, out: Path) -> str | None:
    value = study.spec.tracking.mlflow
    if value is None or value is False:
        return None
    if value is True:
        return f"sqlite:///{(out / 'mlflow.db').resolve()}"
    return str(value)


class MlflowTracker:
    """One MLflow run: parameters at the start, a step per epoch, final values at the end."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("epoch", 0))
        for key, value in flatten_record(record).items():
            self.client.log_metric(self.run_id, key.replace("/", "."), value, step=step)

    def log_final(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            if math.isfinite(value):
                self.client.log_metric(self.run_id, key.replace("/", "."), value)


def _client(uri: str, experiment: str, out: Path) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, found.experiment_id
    location = (out / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite") else None
    try:
        return client, client.create_experiment(experiment, artifact_location=location)
    except Exception:  # another worker created it first
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return client, found.experiment_id


@contextlib.contextmanager
def tracker_for(study: Study, out: Path, run_name: str, params: Mapping[str, Any]) -> Iterator[MlflowTracker | None]:
    """An MLflow run for one trial or final run, or None when the study does not track."""
    uri = tracking_uri(study, out)
    if uri is None:
        yield None
        return
    client, experiment = _client(uri, study.spec.name, out)
    run = client.create_run(experiment, run_name=run_name)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:500])
    status = "FAILED"
    try:
        yield MlflowTracker(client, run.info.run_id)
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status=status)


def log_report(study: Study, out: Path, files: list[Path]) -> None:
    """The report (and its JSON/CSV) as artifacts of a ``report`` run."""
    uri = tracking_uri(study, out)
    if uri is None:
        return
    client, experiment = _client(uri, study.spec.name, out)
    run = client.create_run(experiment, run_name="report")
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)


__all__ = ["MlflowTracker", "flatten_record", "log_report", "tracker_for", "tracking_uri"]
