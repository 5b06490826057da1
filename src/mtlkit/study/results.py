"""A finished study's numbers: test metrics by arm and seed, comparisons with single-task, Δm, history.

``results.json`` holds everything the report shows; ``results.csv`` one row per (arm, task,
seed) test value; ``verdicts.csv`` one row per (arm, task) comparison. The report
(:mod:`mtlkit.study.report`) is drawn from the same dictionary.

Example:
    >>> rows = verdict_rows({"arms": {"mmoe": {"comparisons": {"y1": {"metric": "rmse", "mean": 0.01, "low": 0.0, "high": 0.02,
    ...     "verdict": "no detectable difference", "seeds_needed": 9}}}}})
    >>> rows[0]["arm"], rows[0]["versus"], rows[0]["task"], rows[0]["verdict"]
    ('mmoe', 'single_task', 'y1', 'no detectable difference')
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mtlkit.study.arms import Study
from mtlkit.study.spec import SINGLE_TASK
from mtlkit.study.stats import delta_m_per_seed, summarize


def tuning_history(study: Study, out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trial of every arm: number, state, objective, parameters, per-epoch objectives."""
    from mtlkit.study.tuning import arm_study, decode_params, open_storage, storage_url

    storage = open_storage(storage_url(study, out), study.spec.tuning.heartbeat_seconds)
    history = {}
    for arm in study.arms:
        trials = arm_study(study, arm, storage).get_trials(deepcopy=False)
        history[arm.name] = [{"number": t.number, "state": t.state.name.lower(), "value": t.value,
                              "params": decode_params(arm.search, t.params), "curve": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                              "run_dir": t.user_attrs.get("run_dir")} for t in trials]
    return history


def collect_results(study: Study, out: Path, best: dict[str, dict[str, Any]], summaries: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    seeds = list(study.spec.seeds)
    metrics = study.metrics
    test: dict[str, dict[str, list[float]]] = {}
    for arm in study.arms:
        test[arm.name] = {}
        for task in arm.judged:
            values = []
            for seed in seeds:
                summary = summaries[(arm.name, seed)]
                scores = summary.get("test") or summary["validation"]
                values.append(float(scores[task][metrics[task].name]))
            test[arm.name][task] = values
    baseline = test[SINGLE_TASK]
    arms: dict[str, Any] = {}
    for arm in study.arms:
        entry: dict[str, Any] = {"tasks": arm.tasks, "judged": arm.judged, "best": best[arm.name], "test": test[arm.name],
                                 "commands": final_commands(study, out, arm.name)}
        if arm.name != SINGLE_TASK:
            entry["comparisons"] = _compare(test[arm.name], baseline, arm.judged, metrics)
            entry["versus"] = {other: _compare(test[arm.name], test[other], [t for t in arm.judged if t in test[other]], metrics)
                               for other in arm.versus if other != SINGLE_TASK}
            dm = delta_m_per_seed(test[arm.name], {t: baseline[t] for t in arm.judged}, {t: metrics[t].higher_is_better for t in arm.judged})
            entry["delta_m"] = summarize(dm).as_dict()
        arms[arm.name] = entry
    results: dict[str, Any] = {
        "study": study.spec.name, "source": study.source, "seeds": seeds,
        "metrics": {t: m.model_dump() for t, m in metrics.items()}, "budget": study.spec.tuning.trials,
        "arms": arms, "history": tuning_history(study, out),
        "commands": {"study": f"mtlkit study run {study.source} --out {out}"},
    }
    affinity = out / "affinity" / "affinity.json"
    if affinity.exists():
        results["affinity"] = json.loads(affinity.read_text())
    return results


def _compare(arm: dict[str, list[float]], other: dict[str, list[float]], tasks: list[str], metrics: dict[str, Any]) -> dict[str, Any]:
    from mtlkit.study.stats import paired_differences

    return {t: {"metric": metrics[t].name, "direction": metrics[t].direction,
                **summarize(paired_differences(arm[t], other[t], metrics[t].higher_is_better)).as_dict()} for t in tasks}


def final_commands(study: Study, out: Path, arm: str) -> list[str]:
    """The command that reproduces each final number from its run directory's resolved config."""
    return [f"mtlkit train {out / 'finals' / arm / f'seed-{s}' / 'config.yaml'} --out {out / 'repro' / arm / f'seed-{s}'}" for s in study.spec.seeds]


def verdict_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for arm, entry in results["arms"].items():
        against = [(SINGLE_TASK, entry.get("comparisons") or {}), *(entry.get("versus") or {}).items()]
        for other, comparisons in against:
            for task, c in comparisons.items():
                rows.append({"arm": arm, "versus": other, "task": task, "metric": c["metric"], "mean_difference": c["mean"], "ci_low": c["low"],
                             "ci_high": c["high"], "verdict": c["verdict"], "seeds_needed": c["seeds_needed"]})
    return rows


def write_results(study: Study, out: Path, results: dict[str, Any]) -> list[Path]:
    """results.json, results.csv, verdicts.csv and report.html; the paths written."""
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "task", "metric", "seed", "test"])
        for arm, entry in results["arms"].items():
            for task, values in entry["test"].items():
                for seed, value in zip(results["seeds"], values):
                    writer.writerow([arm, task, results["metrics"][task]["name"], seed, value])
    with (out / "verdicts.csv").open("w", newline="") as handle:
        rows = verdict_rows(results)
        dict_writer = csv.DictWriter(handle, fieldnames=["arm", "versus", "task", "metric", "mean_difference", "ci_low", "ci_high", "verdict", "seeds_needed"])
        dict_writer.writeheader()
        dict_writer.writerows(rows)
    from mtlkit.study.report import write_report

    paths = [out / "results.json", out / "results.csv", out / "verdicts.csv", write_report(results, out / "report.html")]
    from mtlkit.study.tracking import log_report

    log_report(study, out, paths)
    return paths


__all__ = ["collect_results", "final_commands", "tuning_history", "verdict_rows", "write_results"]
