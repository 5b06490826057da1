"""``mtlkit study run``: tune every arm in N processes, retrain the best settings on every seed, report.

Layout of the study directory::

    optuna.db                     the trials (unless tuning.storage names another database)
    trials/<arm>/trial-NNNN/      one run directory per trial (validation only)
    finals/<arm>/seed-S/          the arm's best setting trained on seed S, scored on test once
    results.json, results.csv     every final number, the statistics and the affinity
    report.html                   the report (mtlkit.study.report)

Running the same command again continues: finished trials stay in the database, and a final run
with a ``summary.json`` is read back rather than trained again (an unfinished one resumes from its
``last.pt``).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.study.arms import Study, load_study

FINALS = "finals"


def _worker(path: str, out: str, worker: int, threads: int) -> None:
    """One tuning process: every arm in turn, until each has its budget (other workers share it)."""
    import torch

    torch.set_num_threads(threads)
    from mtlkit.study.tuning import open_storage, storage_url, tune_arm

    study = load_study(path)
    storage = open_storage(storage_url(study, Path(out)), study.spec.tuning.heartbeat_seconds)
    arms = study.arms[worker % len(study.arms):] + study.arms[:worker % len(study.arms)]  # workers start on different arms
    for arm in arms:
        tune_arm(study, arm, Path(out), storage, worker)


def _final(path: str, out: str, arm_name: str, seed: int, params: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train the arm's best setting on ``seed`` with the test split, once; a finished run is read back."""
    import torch

    torch.set_num_threads(threads)
    study = load_study(path)
    arm = study.arm(arm_name)
    run_dir = Path(out) / FINALS / arm_name / f"seed-{seed}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir.parent / f".seed-{seed}.lock"):  # two `study run`s on one directory train each final run once
        return _final_unlocked(study, arm, Path(out), run_dir, seed, params)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _final_unlocked(study: Study, arm: Any, out: Path, run_dir: Path, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    from mtlkit.study.tracking import tracker_for
    from mtlkit.study.tuning import TrialReporter, train_arm

    arm_name = arm.name
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    config = arm.config(f"{study.source}: arm {arm_name!r}, seed {seed}", params, seed, study.spec.tuning.epochs)
    with tracker_for(study, out, f"{arm_name}/seed-{seed}", {"arm": arm_name, "phase": "final", "seed": seed, **params}) as tracker:
        summary = train_arm(study, arm, config, run_dir, [TrialReporter(None, arm.judged, study.metrics, tracker)], with_test=True)
        if tracker is not None and summary.get("test"):
            tracker.log_final({f"test/{t}/{m}": v for t, ms in summary["test"].items() for m, v in ms.items()})
    return summary


def _check_manifest(study: Study, out: Path) -> None:
    """A study directory belongs to one study: another study's name there is an error."""
    manifest = out / "study.json"
    body = {"name": study.spec.name, "source": str(Path(study.source).resolve())}
    if manifest.exists():
        found = json.loads(manifest.read_text())
        if found.get("name") != study.spec.name:
            raise ConfigError(f"{out}: holds study {found.get('name')!r}, not {study.spec.name!r}: give another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(body, indent=1))


def tuning_status(study: Study, out: Path, reap: bool = False) -> dict[str, dict[str, Any]]:
    """Per arm: trial counts by state and the best validation objective so far (``reap``: fail killed workers' trials first)."""
    from mtlkit.study.tuning import arm_study, best_trial, counts, fail_dead_trials, open_storage, storage_url

    storage = open_storage(storage_url(study, out), study.spec.tuning.heartbeat_seconds)
    status = {}
    for arm in study.arms:
        found = arm_study(study, arm, storage)
        if reap:
            fail_dead_trials(found)
        best = best_trial(found)
        status[arm.name] = {**counts(found), "best": best.value if best else None}
    return status


def _progress_table(study: Study, status: dict[str, dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in ("arm", "done", "running", "pruned", "failed", "best (validation)"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in study.arms:
        s = status[arm.name]
        best = "—" if s["best"] is None else f"{s['best']:.5g}"
        table.add_row(arm.name, f"{s['complete'] + s['pruned']}/{study.spec.tuning.trials}", str(s["running"]), str(s["pruned"]),
                      str(s["failed"]), best)
    return table


def _watch(processes: list[Any], study: Study, out: Path, show: bool, console: Any) -> None:
    """Wait for the workers, redrawing the progress table (a live view on a terminal)."""
    from rich.live import Live

    if not show:
        for p in processes:
            p.join()
        return
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while any(p.is_alive() for p in processes):
            live.update(_progress_table(study, tuning_status(study, out), "tuning"))
            time.sleep(1.0)
        live.update(_progress_table(study, tuning_status(study, out), "tuning"))
    console.print()


def run_study(path: str | Path, out: str | Path, workers: int = 1, progress: bool = True, console: Any = None,
              threads: int | None = None, on_status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tune, retrain on the seeds, compute the statistics and write the report; the results."""
    from rich.console import Console

    console = console or Console()
    say = on_status or (lambda text: console.print(text))
    path, out = Path(path), Path(out)
    study = load_study(path)  # every check before anything is written
    _check_manifest(study, out)
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    tuning_status(study, out, reap=True)  # creates the database, checks every arm's fingerprint, fails killed workers' trials
    context = multiprocessing.get_context("spawn")
    say(f"tuning {len(study.arms)} arms x {study.spec.tuning.trials} trials in {workers} process(es) → {out}")
    if workers == 1:
        _worker(str(path), str(out), 0, threads)
        if progress:
            console.print(_progress_table(study, tuning_status(study, out), "tuning"))
    else:
        processes = [context.Process(target=_worker, args=(str(path), str(out), w, threads)) for w in range(workers)]
        for p in processes:
            p.start()
        try:
            _watch(processes, study, out, progress, console)
        except KeyboardInterrupt:
            for p in processes:
                p.join()
            raise
        failed = [p.exitcode for p in processes if p.exitcode]
        if failed:
            raise ConfigError(f"{out}: {len(failed)} tuning process(es) stopped with an error (exit code {failed[0]}); run the same command "
                              "again to continue")
    best = best_settings(study, out)
    jobs = [(arm.name, seed) for arm in study.arms for seed in study.spec.seeds]
    say(f"final runs: {len(study.arms)} arms x {len(study.spec.seeds)} seeds, test scored once each")
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    if workers == 1:
        for arm_name, seed in jobs:
            summaries[(arm_name, seed)] = _final(str(path), str(out), arm_name, seed, best[arm_name]["params"], threads)
    else:
        with context.Pool(workers) as pool:
            pending = [pool.apply_async(_final, (str(path), str(out), a, s, best[a]["params"], threads)) for a, s in jobs]
            for (arm_name, seed), result in zip(jobs, pending):
                summaries[(arm_name, seed)] = result.get()
    from mtlkit.study.results import collect_results, write_results

    results = collect_results(study, out, best, summaries)
    write_results(study, out, results)
    return results


def best_settings(study: Study, out: Path) -> dict[str, dict[str, Any]]:
    """Each arm's best trial: its number, validation objective, parameters and run directory."""
    from mtlkit.study.tuning import arm_study, best_trial, decode_params, open_storage, storage_url

    storage = open_storage(storage_url(study, out), study.spec.tuning.heartbeat_seconds)
    best = {}
    for arm in study.arms:
        trial = best_trial(arm_study(study, arm, storage))
        if trial is None:
            raise ConfigError(f"{study.source}: arm {arm.name!r} has no complete trial (all pruned or failed): see {out / 'trials' / arm.name}")
        best[arm.name] = {"trial": trial.number, "validation": trial.value, "params": decode_params(arm.search, trial.params),
                          "run_dir": trial.user_attrs.get("run_dir")}
    return best


__all__ = ["best_settings", "run_study", "tuning_status"]
