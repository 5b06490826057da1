"""Fair tuning: every arm gets the same Optuna budget, on the validation split only.

Each arm is one Optuna study (TPE sampler, Akiba et al. KDD 2019; median pruning) in one
database: SQLite under the study directory by default, or any RDB URL Optuna takes, so several
machines can share a study. A trial is a normal run directory (``trials/<arm>/trial-NNNN``),
trained on the study's first seed with the test split held back: the trial reports its objective
after every epoch (:class:`TrialReporter`, a trainer callback), and the median pruner stops it
when it is below the median of earlier trials at the same epoch.

The objective of an arm is the mean over the tasks it is judged on of each task's study metric,
signed so that higher is better, on one scale: a score (AUC, accuracy, F1, Pearson: maximised,
bounded) counts as it is, an error (RMSE, log loss, loss: minimised, positive, in the label's
units) as ``−log(error)``, whose change is the error's relative change. Without the log a watch
time RMSE of 7.5 seconds would outweigh every AUC in the mean and the tuning would follow it alone.
The budget counts finished trials (complete or pruned); a trial
interrupted by Ctrl-C is marked failed by Optuna and one killed outright is found by its stopped
heartbeat and retried with the same parameters, so running the same command again continues
without repeating finished trials.

Example:
    >>> from mtlkit.study.spec import MetricSpec
    >>> metrics = {"a": MetricSpec(name="auc"), "b": MetricSpec(name="rmse")}
    >>> objective({"a": {"auc": 0.8}, "b": {"rmse": 0.4}}, ["a", "b"], metrics)  # (0.8 − log 0.4) / 2
    0.858145365937
    >>> round(objective({"b": {"rmse": 0.44}}, ["b"], metrics) - objective({"b": {"rmse": 0.4}}, ["b"], metrics), 4)  # 10 % worse
    -0.0953
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.study.spec import MetricSpec, Param
from mtlkit.train.callbacks import Callback

if TYPE_CHECKING:
    import optuna

    from mtlkit.study.arms import Arm, Study


# Part of the arm fingerprint of studies with an error metric: trials scored on another scale are not resumed.
OBJECTIVE_SCALE = "errors as -log"
_TINY_ERROR = 1e-12  # an error of exactly 0 (a perfectly fitted toy) stays finite


def objective(results: Mapping[str, Mapping[str, float]], judged: Sequence[str], metrics: Mapping[str, MetricSpec]) -> float:
    """Mean over ``judged`` tasks of their metric, higher is better: scores as they are, errors as ``−log``."""
    values = []
    for task in judged:
        metric = metrics[task]
        value = float(results[task][metric.name])
        values.append(value if metric.higher_is_better else -math.log(max(value, _TINY_ERROR)))
    return round(sum(values) / len(values), 12)


def epoch_objective(record: Mapping[str, Any], judged: Sequence[str], metrics: Mapping[str, MetricSpec]) -> float:
    """:func:`objective` from a trainer epoch record (``val/<task>/<metric>`` keys)."""
    return objective({t: {metrics[t].name: record[f"val/{t}/{metrics[t].name}"]} for t in judged}, judged, metrics)


def suggest(trial: optuna.Trial, space: Mapping[str, Param]) -> dict[str, Any]:
    """One value per search key, drawn by the trial's sampler."""
    params: dict[str, Any] = {}
    for key, param in space.items():
        if param.kind == "categorical":
            # Optuna's choices must be plain scalars: lists (``hidden: [64, 32]``) are drawn by index.
            assert param.choices is not None
            index = trial.suggest_categorical(key, list(range(len(param.choices))))
            params[key] = param.choices[index]
        elif param.kind == "int":
            params[key] = trial.suggest_int(key, int(param.low), int(param.high))  # type: ignore[arg-type]
        else:
            params[key] = trial.suggest_float(key, param.low, param.high, log=param.log)  # type: ignore[arg-type]
    return params


def decode_params(space: Mapping[str, Param], stored: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's stored parameters (choice indices) as config values."""
    out = {}
    for key, param in space.items():
        if key in stored:
            out[key] = param.choices[int(stored[key])] if param.choices is not None else stored[key]
    return out


class TrialReporter(Callback):
    """Reports the objective after every epoch to the trial and prunes; optionally logs to MLflow."""

    def __init__(self, trial: optuna.Trial | None, judged: Sequence[str], metrics: Mapping[str, MetricSpec], tracker: Any = None) -> None:
        self.trial, self.judged, self.metrics, self.tracker = trial, list(judged), dict(metrics), tracker

    def on_epoch_end(self, trainer: Any, record: dict[str, Any], validation: Any) -> None:
        value = epoch_objective(record, self.judged, self.metrics)
        record["study_objective"] = value
        if self.tracker is not None:
            self.tracker.log_epoch(record)
        if self.trial is None:
            return
        import optuna

        self.trial.report(value if math.isfinite(value) else float("-inf"), int(record["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {record['epoch']}: {value:.6g} is below the median of earlier trials")


# -- storage and studies ------------------------------------------------------------------------


def storage_url(study: Study, out: Path) -> str:
    return study.spec.tuning.storage or f"sqlite:///{(out / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words, and stable since 2.8
        warnings.simplefilter("ignore")
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry is not None:  # Optuna >= 4.9
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                              heartbeat_stale_trial_callback=retry(max_retry=3))
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                          failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=3))


def study_fingerprint(study: Study, arm: Arm) -> str:
    """What an arm's finished trials depend on: its config and space, its metrics, tuning seed and epochs."""
    import hashlib

    fields: dict[str, Any] = {"arm": arm.fingerprint(), "metrics": {t: study.metrics[t].model_dump() for t in arm.judged},
                              "seed": study.spec.seeds[0], "epochs": study.spec.tuning.epochs}
    if any(not study.metrics[t].higher_is_better for t in arm.judged):
        fields["objective"] = OBJECTIVE_SCALE  # studies of scores only keep the fingerprint they had before the scale
    body = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def arm_study(study: Study, arm: Arm, storage: Any, worker: int = 0) -> optuna.Study:
    """The arm's Optuna study; a stored one tuned for another config of the arm is a ConfigError."""
    import optuna

    tuning = study.spec.tuning
    sampler = optuna.samplers.TPESampler(seed=tuning.sampler_seed + 1000 * worker, n_startup_trials=min(4, tuning.trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=tuning.pruner.startup_trials, n_warmup_steps=tuning.pruner.warmup_epochs)
    name = f"{study.spec.name}/{arm.name}"
    found = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True)
    fingerprint = study_fingerprint(study, arm)
    stored = found.user_attrs.get("fingerprint")
    if stored is None:
        found.set_user_attr("fingerprint", fingerprint)
        found.set_user_attr("search", {k: v.model_dump() for k, v in arm.search.items()})
    elif stored != fingerprint:
        done = len(finished(found))
        raise ConfigError(f"{study.source}: arm {arm.name!r} changed (config, search space, metrics, seeds[0], tuning.epochs or the "
                          f"objective's scale) since its {done} finished trials in {name!r}: restore the study file, or give a new --out "
                          "(or tuning.storage) for a new study; the finished trials are kept")
    return found


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(optuna_study: optuna.Study) -> int:
    """Mark failed the running trials whose worker process on this host is gone (killed); the number marked.

    Trials of workers on other hosts are left to Optuna's heartbeat (failed and retried after
    ``2 × tuning.heartbeat_seconds`` of silence). A failed trial is not counted in the budget, so a
    new one takes its place; finished trials are never touched.
    """
    import socket

    from optuna.trial import TrialState

    host, marked = socket.gethostname(), 0
    for trial in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == host and isinstance(worker.get("pid"), int) and not _alive(worker["pid"]):
            optuna_study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            marked += 1
    return marked


def finished(optuna_study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def counts(optuna_study: optuna.Study) -> dict[str, int]:
    from optuna.trial import TrialState

    trials = optuna_study.get_trials(deepcopy=False)
    by = {s: sum(t.state == s for t in trials) for s in TrialState}
    return {"complete": by[TrialState.COMPLETE], "pruned": by[TrialState.PRUNED], "running": by[TrialState.RUNNING],
            "waiting": by[TrialState.WAITING], "failed": by[TrialState.FAIL]}


def best_trial(optuna_study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    complete = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


# -- one trial ---------------------------------------------------------------------------------------


_PREPARED: dict[str, Any] = {}  # per process: the data each arm reads, read once


def train_arm(study: Study, arm: Arm, config: Any, run_dir: Path, callbacks: Sequence[Callback], with_test: bool) -> dict[str, Any]:
    """Train one run of ``arm``; tuning runs (``with_test=False``) never see the test split.

    A run that ends (complete, or pruned: never resumed either) drops its resume checkpoint
    (:attr:`StudySpec.keep_last_checkpoints`); an interrupted one keeps it and resumes.
    """
    import optuna

    try:
        summary = _train(study, config, run_dir, callbacks, with_test)
    except optuna.TrialPruned:
        _drop_resume_checkpoint(study, run_dir)
        raise
    _drop_resume_checkpoint(study, run_dir)
    return summary


def _train(study: Study, config: Any, run_dir: Path, callbacks: Sequence[Callback], with_test: bool) -> dict[str, Any]:
    if study.is_nlp:
        from mtlkit.nlp.run import train_nlp_run

        return train_nlp_run(config, run_dir, overwrite=False, progress=False, callbacks=callbacks)
    from mtlkit.run import prepare_data, train_run

    key = json.dumps([config.data.model_dump(mode="json"), [t.name for t in config.tasks or []]], sort_keys=True)
    if key not in _PREPARED:
        _PREPARED[key] = prepare_data(config)
    prepared = _PREPARED[key]
    if not with_test:
        prepared = replace(prepared, test=None)
    return train_run(config, run_dir, overwrite=False, progress=False, callbacks=callbacks, prepared=prepared)


def _drop_resume_checkpoint(study: Study, run_dir: Path) -> None:
    """A finished run needs no resume point: drop last.pt unless the study keeps it (best.pt stays)."""
    if not study.spec.keep_last_checkpoints:
        (run_dir / "last.pt").unlink(missing_ok=True)


def run_trial(study: Study, arm: Arm, trial: optuna.Trial, out: Path) -> float:
    """Sample, train on validation only, and return the arm's objective (the Optuna objective)."""
    import os
    import socket

    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})  # a dead worker's trial is failed at once on this host
    params = suggest(trial, arm.search)
    run_dir = out / "trials" / arm.name / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
    config = arm.config(f"{study.source}: arm {arm.name!r}, trial {trial.number}", params, study.spec.seeds[0], study.spec.tuning.epochs)
    from mtlkit.study.tracking import tracker_for

    with tracker_for(study, out, f"{arm.name}/trial-{trial.number:04d}", {"arm": arm.name, "phase": "tuning", **params}) as tracker:
        summary = train_arm(study, arm, config, run_dir, [TrialReporter(trial, arm.judged, study.metrics, tracker)], with_test=False)
        value = objective(summary["validation"], arm.judged, study.metrics)
        if tracker is not None:
            tracker.log_final({"study_objective": value})
    return value


def tune_arm(study: Study, arm: Arm, out: Path, storage: Any, worker: int = 0) -> None:
    """Run trials of ``arm`` until its budget of finished trials is reached (shared with other workers)."""
    optuna_study = arm_study(study, arm, storage, worker)
    budget = study.spec.tuning.trials
    while True:
        c = counts(optuna_study)
        if c["complete"] + c["pruned"] + c["running"] >= budget:
            return
        if c["failed"] >= budget + 3:
            return  # every trial fails: reported by the run summary, not retried forever
        # a setting that fails (bad input it produced, a numerical blow-up) is a failed trial, not a stopped study
        optuna_study.optimize(lambda trial: run_trial(study, arm, trial, out), n_trials=1, catch=(MtlkitError, RuntimeError, ValueError, FloatingPointError),
                              gc_after_trial=False, show_progress_bar=False)


__all__ = ["TrialReporter", "arm_study", "best_trial", "counts", "decode_params", "epoch_objective", "finished", "objective",
           "open_storage", "run_trial", "storage_url", "suggest", "train_arm", "tune_arm"]
