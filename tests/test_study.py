"""mtlkit study: the study file and its bad inputs, statistics with known answers, grouping, affinity
on the planted answer, tuning that resumes, the HTML report and MLflow tracking."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mtlkit.errors import ConfigError
from mtlkit.study.arms import load_study
from mtlkit.study.grouping import best_grouping, partitions
from mtlkit.study.planted import RELATED, UNRELATED, planted_config, planted_table
from mtlkit.study.spec import AffinitySpec
from mtlkit.study.stats import HELPS, HURTS, NO_DIFFERENCE, bootstrap_interval, compare, delta_m_per_seed, seeds_needed


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("planted")
    pq.write_table(planted_table(n=1500, d=8), folder / "planted.parquet")
    return folder


def base_config(folder: Path, epochs: int = 2) -> dict:
    config = planted_config(str(folder / "planted.parquet"), d=8)
    config["train"].update(epochs=epochs, batch_size=256)
    return config


def write_study(folder: Path, name: str = "study.yaml", **changes) -> Path:
    study = {"name": "planted", "base": base_config(folder), "seeds": [0, 1, 2],
             "metrics": {t: "rmse" for t in (*RELATED, UNRELATED)},
             "arms": [{"name": "all_four"}, {"name": "related", "tasks": list(RELATED)}],
             "search": {"train.lr": {"low": 0.001, "high": 0.01, "log": True}},
             "tuning": {"trials": 2, "pruner": {"startup_trials": 1}}}
    study.update(changes)
    path = folder / name
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


# -- the study file -------------------------------------------------------------------------------


def test_single_task_arm_is_added_with_the_shared_bottom_width(planted):
    study = load_study(write_study(planted))
    assert [a.name for a in study.arms] == ["single_task", "all_four", "related"]
    single = study.arm("single_task").config("x")
    assert single.model.backbone == "single_task" and single.model.options == {"hidden": [32]}
    assert [t.name for t in study.arm("related").config("x").tasks] == list(RELATED)
    assert study.arm("related").judged == list(RELATED)


@pytest.mark.parametrize("changes, message", [
    ({"arms": [{"name": "a"}, {"name": "b"}]}, "arms 'a' and 'b' differ in nothing"),
    ({"arms": [{"name": "st", "patch": {"model": {"backbone": "single_task", "options": {"hidden": [32]}}, "balancer": {"name": "fixed"}}}]},
     "differ in nothing"),
    ({"search": {"train.lrr": {"low": 0.1, "high": 1}}}, "search key 'train.lrr'"),
    ({"search": {"model.options.widht": {"choices": [1, 2]}}}, "search key 'model.options.widht'"),
    ({"search": {"train.lr": {"low": 0.1, "high": 0.1}}}, "empty range"),
    ({"search": {"train.lr": {"choices": []}}}, "empty range"),
    ({"metrics": {"y1": "auc"}}, "key 'metrics.y1.name': task 'y1' does not report 'auc'"),
    ({"metrics": {"clicks": "rmse"}}, "key 'metrics.clicks': no task 'clicks'"),
    ({"arms": [{"name": "x", "tasks": ["y9"]}]}, "no task 'y9'"),
    ({"arms": [{"name": "x", "versus": ["nope"]}]}, "'nope' is not another arm"),
    ({"seeds": [1, 2, 1]}, "seeds must be distinct"),
    ({"seeds": [1, 2]}, "key 'seeds': List should have at least 3 items"),
    ({"tuning": {"storage": "db.sqlite"}}, "expected a database URL"),
])
def test_bad_study_files_are_one_line_errors(planted, changes, message):
    path = write_study(planted, "bad.yaml", **changes)
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert message in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


# -- statistics with known answers ------------------------------------------------------------------


def test_paired_comparison_known_answers():
    c = compare([0.9, 0.8, 0.7], [0.8, 0.7, 0.6], higher_is_better=True)
    assert (c.mean, c.low, c.high, c.verdict) == (0.1, 0.1, 0.1, HELPS)
    c = compare([0.9, 0.8, 0.7], [0.8, 0.7, 0.6], higher_is_better=False)  # an error metric: higher is worse
    assert (c.mean, c.verdict) == (-0.1, HURTS)
    c = compare([1.0, 2.0], [2.0, 1.0], higher_is_better=True)  # +1 and -1: the interval holds 0
    assert c.mean == 0.0 and c.low == -1.0 and c.high == 1.0 and c.verdict == NO_DIFFERENCE and c.seeds_needed is None


def test_bootstrap_interval_covers_the_mean_at_about_95_percent():
    rng = np.random.default_rng(0)
    covered = sum(lo <= 0 <= hi for lo, hi in (bootstrap_interval(rng.normal(0, 1, 40), resamples=2000, seed=i) for i in range(200)))
    assert 0.88 <= covered / 200 <= 0.99


def test_seeds_needed_normal_approximation():
    assert seeds_needed(1.0, 1.0) == 8  # (1.96 + 0.8416)^2 = 7.85
    assert seeds_needed(2.0, 1.0) == 32  # four times the variance
    assert seeds_needed(0.5, 0.1, power=0.9) == math.ceil(((1.959964 + 1.281552) * 5) ** 2)


def test_tuning_objective_weighs_an_error_by_its_relative_change_not_its_units():
    """Watch time RMSE in seconds next to AUCs: 2 AUC points must outweigh a 1.3 % larger RMSE."""
    from mtlkit.study.spec import MetricSpec
    from mtlkit.study.tuning import objective

    metrics = {"click": MetricSpec(name="auc"), "watch_time": MetricSpec(name="rmse")}
    better_auc = {"click": {"auc": 0.77}, "watch_time": {"rmse": 7.6}}
    better_rmse = {"click": {"auc": 0.75}, "watch_time": {"rmse": 7.5}}
    assert objective(better_auc, ["click", "watch_time"], metrics) > objective(better_rmse, ["click", "watch_time"], metrics)
    scaled = {"click": {"auc": 0.75}, "watch_time": {"rmse": 75.0}}  # the same model with labels in tenths of a second
    assert objective(scaled, ["click", "watch_time"], metrics) - objective(better_rmse, ["click", "watch_time"], metrics) == pytest.approx(-math.log(10) / 2)
    assert math.isfinite(objective({"watch_time": {"rmse": 0.0}}, ["watch_time"], metrics))


def test_delta_m_per_seed():
    dm = delta_m_per_seed({"a": [0.95, 0.9], "b": [0.9, 1.0]}, {"a": [0.94, 0.9], "b": [1.0, 1.0]}, {"a": True, "b": False})
    assert round(dm[0], 3) == 5.532 and dm[1] == 0.0


# -- grouping and affinity -----------------------------------------------------------------------------


def test_partitions_are_bell_numbers():
    assert sum(1 for _ in partitions(list(range(4)), 4)) == 15
    assert sum(1 for _ in partitions(list(range(4)), 2)) == 8  # 1 + S(4, 2) = 1 + 7


def test_grouping_keeps_a_harmful_task_apart_and_respects_the_budget():
    z = np.array([[0, .2, .1, -.3], [.2, 0, .2, -.3], [.1, .2, 0, -.1], [-.3, -.3, -.3, 0]])
    assert best_grouping(z, 2).groups == [(0, 1, 2), (3,)]
    assert best_grouping(z, 1).groups == [(0, 1, 2, 3)]
    assert best_grouping(-np.abs(z), 4).groups == [(0,), (1,), (2,), (3,)]  # nothing helps: every task alone


def test_planted_affinity_separates_the_unrelated_task(planted, tmp_path):
    from mtlkit.study.affinity import run_affinity
    from mtlkit.study.arms import validate_config

    pq.write_table(planted_table(n=6000, d=16), tmp_path / "planted.parquet")  # the generator's defaults
    raw = planted_config(str(tmp_path / "planted.parquet"), d=16)
    config = validate_config(raw, "planted")
    result = run_affinity(config, AffinitySpec(epochs=4, every=5, groups=2), tmp_path / "aff")
    z = np.array(result["affinity"])
    related, noise = [0, 1, 2], 3
    between = [z[i, j] for i in related for j in related if i != j]
    to_noise = [z[i, noise] for i in related] + [z[noise, j] for j in related]
    assert min(between) > max(to_noise), z  # every related pair above every pair with the unrelated task
    assert result["grouping"]["groups"] == [list(RELATED), [UNRELATED]]
    cos = np.array(result["cosine"])
    assert np.mean([cos[i, j] for i in related for j in related if i != j]) > np.mean([abs(cos[i, noise]) for i in related])
    assert json.loads((tmp_path / "aff" / "affinity.json").read_text())["grouping"]["budget"] == 2


# -- a whole study: tuning, resumption, statistics, report, tracking -------------------------------------


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.scripts = 0
        self.external = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag in ("img", "link") and not (attrs.get("src") or attrs.get("href") or "data:").startswith("data:"):
            self.external += 1
        if tag == "table":
            self._table = attrs.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def finished_study(planted, tmp_path_factory):
    from mtlkit.study.runner import run_study

    out = tmp_path_factory.mktemp("study") / "out"
    path = write_study(planted, "run.yaml", arms=[{"name": "all_four", "versus": ["related"]}, {"name": "related", "tasks": list(RELATED)}],
                       tracking={"mlflow": True})
    results = run_study(path, out, workers=1, progress=False, threads=1, on_status=lambda _: None)
    return path, out, results


def test_study_tunes_every_arm_equally_and_scores_test_once(finished_study):
    path, out, results = finished_study
    for arm in ("single_task", "all_four", "related"):
        history = results["history"][arm]
        assert sum(t["state"] in ("complete", "pruned") for t in history) == 2
        for trial in history:  # a trial is a normal run directory, tuned on validation only
            run = out / trial["run_dir"]
            assert (run / "config.yaml").exists()
            assert not (run / "test_metrics.json").exists()
            assert (run / "best.pt").exists() and not (run / "last.pt").exists()  # finished or pruned: no resume point kept
        for seed in (0, 1, 2):
            final = out / "finals" / arm / f"seed-{seed}"
            summary = json.loads((final / "summary.json").read_text())
            assert summary["test"] is not None
            assert (final / "best.pt").exists() and not (final / "last.pt").exists()
            assert results["arms"][arm]["test"][results["arms"][arm]["judged"][0]][seed] == summary["test"][results["arms"][arm]["judged"][0]]["rmse"]
    assert set(results["arms"]["related"]["test"]) == set(RELATED)
    assert set(results["arms"]["all_four"]["versus"]["related"]) == set(RELATED)


def test_rerun_repeats_no_finished_trial(finished_study):
    from mtlkit.study.runner import run_study

    path, out, results = finished_study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("finals/*/*/summary.json")}
    again = run_study(path, out, workers=1, progress=False, threads=1, on_status=lambda _: None)
    assert [t["number"] for t in again["history"]["related"]] == [t["number"] for t in results["history"]["related"]]
    assert {p: p.stat().st_mtime_ns for p in out.glob("finals/*/*/summary.json")} == stamps
    assert again["arms"]["related"]["comparisons"] == results["arms"]["related"]["comparisons"]


def test_changed_study_file_keeps_finished_trials(finished_study):
    from mtlkit.study.runner import run_study

    path, out, _ = finished_study
    changed = path.with_name("changed.yaml")
    raw = yaml.safe_load(path.read_text())
    raw["search"] = {"train.lr": {"low": 0.0001, "high": 0.001, "log": True}}
    changed.write_text(yaml.safe_dump(raw))
    before = sorted(p.name for p in out.glob("trials/*/*"))
    with pytest.raises(ConfigError, match="changed .* since its 2 finished trials"):
        run_study(changed, out, workers=1, progress=False, threads=1, on_status=lambda _: None)
    assert sorted(p.name for p in out.glob("trials/*/*")) == before


def test_report_is_self_contained_and_holds_the_verdicts(finished_study):
    _, out, results = finished_study
    parser = _Tables()
    parser.feed((out / "report.html").read_text())
    assert parser.scripts == 0 and parser.external == 0
    rows = parser.tables["verdicts"][1:]
    expected = [r for r in __import__("mtlkit.study.results", fromlist=["verdict_rows"]).verdict_rows(results)]
    assert len(rows) == len(expected) == 3 + 4 + 3  # related (3 tasks), all_four (4), all_four vs related (3)
    for row, want in zip(rows, expected):
        assert row[:4] == [want["arm"], want["versus"], want["task"], "rmse"]
        assert float(row[4]) == pytest.approx(want["mean_difference"], rel=1e-5)
        assert float(row[5]) == pytest.approx(want["ci_low"], rel=1e-5) and float(row[6]) == pytest.approx(want["ci_high"], rel=1e-5)
        assert row[7] == want["verdict"]
    csv_rows = (out / "verdicts.csv").read_text().splitlines()
    assert len(csv_rows) == len(expected) + 1
    assert len(parser.tables["best"]) == 1 + 3


@pytest.mark.browser
def test_report_renders_in_headless_chromium(finished_study, tmp_path):
    """The report in Debian's Chromium (networking off): a screenshot, no console message, and the
    rendered verdict table equal to results.json (tools/render_report.py); a page that logs an error fails.

    Needs ``apt-get install chromium``, so it is deselected by default: ``python -m pytest -m browser``.
    """
    _, out, _ = finished_study
    tool = Path(__file__).resolve().parents[1] / "tools" / "render_report.py"
    shot = tmp_path / "report.png"
    done = subprocess.run([sys.executable, str(tool), str(out / "report.html"), "--screenshot", str(shot)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "console messages: 0" in done.stdout and "verdict rows" in done.stdout
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    broken = tmp_path / "broken" / "report.html"  # the same page with one console error: the check must fail
    broken.parent.mkdir()
    broken.write_text((out / "report.html").read_text().replace("</body>", "<script>console.error('broken')</script></body>"))
    failed = subprocess.run([sys.executable, str(tool), str(broken)], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1 and "PROBLEM: console" in failed.stdout


def test_mlflow_local_store_holds_params_epochs_and_report(finished_study):
    from mlflow.tracking import MlflowClient

    _, out, _ = finished_study
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("planted")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    names = {r.info.run_name for r in runs}
    assert "report" in names and "related/seed-1" in names and "single_task/trial-0000" in names
    final = next(r for r in runs if r.info.run_name == "related/seed-1")
    assert final.data.params["arm"] == "related" and final.data.params["phase"] == "final"
    history = client.get_metric_history(final.info.run_id, "val.y1.rmse")
    assert [m.step for m in history] == [1, 2]
    assert "test.y1.rmse" in final.data.metrics
    report = next(r for r in runs if r.info.run_name == "report")
    assert "report.html" in [a.path for a in client.list_artifacts(report.info.run_id)]


def test_killed_study_resumes_without_repeating_finished_trials(planted, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from mtlkit.study.runner import run_study

    path = write_study(planted, "kill.yaml", arms=[{"name": "all_four"}], tuning={"trials": 3, "pruner": {"startup_trials": 5}},
                       base={**base_config(planted, epochs=12)})  # 11 epochs of trial 1 left when the kill comes
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mtlkit.cli", "study", "run", str(path), "--out", str(out), "--no-progress", "--threads", "1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    # kill it in the middle of its second trial: the first is finished, the second has trained an epoch
    while time.time() < deadline and not (out / "trials" / "single_task" / "trial-0001" / "metrics.jsonl").exists():
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    import optuna

    storage = f"sqlite:///{out / 'optuna.db'}"
    before = {t.number: (t.state.name, t.value) for t in optuna.load_study(study_name="planted/single_task", storage=storage).trials}
    assert before[0][0] in ("COMPLETE", "PRUNED") and before[1][0] == "RUNNING"
    results = run_study(path, out, workers=1, progress=False, threads=1, on_status=lambda _: None)
    after = {t["number"]: (t["state"].upper(), t["value"]) for t in results["history"]["single_task"]}
    assert after[0] == before[0]  # the finished trial is kept as it was, not repeated
    assert after[1][0] == "FAIL"  # the killed one is failed, and a new trial takes its budget slot
    assert sum(state in ("COMPLETE", "PRUNED") for state, _ in after.values()) == 3
    assert (out / "trials" / "single_task" / "trial-0001" / "config.yaml").exists()  # its directory is kept


def test_nlp_study_falls_out_of_the_pipeline(tmp_path):
    """An NLP base (a top-level `encoder:`) runs through the same study: single-task = each task its own encoder."""
    from mtlkit.study.runner import run_study

    from tiny_bert import save_tiny_bert

    nlp = Path(__file__).resolve().parents[2] / "shared" / "data" / "nlp"
    root = save_tiny_bert(tmp_path / "bert", [(nlp / "sst2" / "train.tsv", 60), (nlp / "stsb" / "sts-train.tsv", 40)])[0] and tmp_path / "bert"
    sst2 = {"name": "sst2", "kind": "classification", "max_length": 24,
            "data": {"train": str(nlp / "sst2" / "train.tsv"), "validation": str(nlp / "sst2" / "dev.tsv"), "test": str(nlp / "sst2" / "dev.tsv"),
                     "format": "glue_tsv", "max_rows": {"train": 48, "validation": 16, "test": 16}}}
    stsb = {"name": "stsb", "kind": "regression", "max_length": 24,
            "data": {"train": str(nlp / "stsb" / "sts-train.tsv"), "validation": str(nlp / "stsb" / "sts-dev.tsv"), "test": str(nlp / "stsb" / "sts-test.tsv"),
                     "format": "sts", "max_rows": {"train": 48, "validation": 16, "test": 16}}}
    base = {"encoder": {"name": str(root)}, "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "patience": None}, "tasks": [sst2, stsb]}
    study = {"name": "glue", "base": base, "seeds": [0, 1, 2], "metrics": {"sst2": "accuracy", "stsb": "pearson"},
             "arms": [{"name": "shared"}], "search": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "tuning": {"trials": 1},
             "keep_last_checkpoints": True}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    loaded = load_study(path)
    single = loaded.arm("single_task").config("x")
    assert [e.task.encoder for e in single.tasks] == ["own", "own"]
    results = run_study(path, tmp_path / "out", workers=1, progress=False, threads=1, on_status=lambda _: None)
    assert set(results["arms"]["shared"]["comparisons"]) == {"sst2", "stsb"}
    assert len(results["arms"]["single_task"]["test"]["sst2"]) == 3
    assert (tmp_path / "out" / "finals" / "shared" / "seed-0" / "last.pt").exists()  # keep_last_checkpoints: true


def test_nlp_metric_directions_are_known_before_any_nlp_import():
    """A study file names NLP metrics (GLUE's f1 and pearson, perplexity) before mtlkit.nlp is imported."""
    code = ("import sys; from mtlkit.study.spec import MetricSpec; assert 'mtlkit.nlp.metrics' not in sys.modules; "
            "print(*(MetricSpec(name=n).direction for n in ('f1', 'pearson', 'perplexity', 'auc')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["maximize", "maximize", "minimize", "maximize"]


def test_affinity_runs_through_embeddings_and_restores_the_weights(tmp_path):
    """Categorical features put the first layer's weight in the saved graph: the look-ahead must not corrupt it."""
    import pyarrow as pa

    from mtlkit.study.affinity import measure_affinity
    from mtlkit.study.arms import validate_config

    rng = np.random.default_rng(0)
    n = 600
    user = rng.integers(0, 20, n)
    x = rng.standard_normal(n)
    pq.write_table(pa.table({"user": [f"u{u}" for u in user], "x": x, "a": (x + user / 10 > 1).astype(float),
                             "b": (user % 2).astype(float)}), tmp_path / "t.parquet")
    config = validate_config({"data": {"train": str(tmp_path / "t.parquet")}, "features": {"categorical": ["user"], "numeric": ["x"]},
                              "tasks": [{"name": "a", "kind": "binary"}, {"name": "b", "kind": "binary"}],
                              "model": {"backbone": "shared_bottom", "options": {"hidden": [16]}}, "train": {"batch_size": 64}}, "t")
    result = measure_affinity(config, AffinitySpec(epochs=2, every=2))
    assert result["measurements"] > 0 and np.isfinite(np.array(result["affinity"])).all()
    assert np.allclose(np.diag(np.array(result["cosine"])), 1.0, atol=1e-5)


def test_cli_bad_study_is_one_line_exit_2_and_writes_nothing(planted, tmp_path):
    from typer.testing import CliRunner

    from mtlkit.cli import app

    path = write_study(planted, "cli_bad.yaml", search={"train.lr": {"low": 0.01, "high": 0.001}})
    result = CliRunner().invoke(app, ["study", "run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "empty range" in result.output and "search.train.lr" in result.output
    assert not (tmp_path / "out").exists()


def test_progress_table_counts_by_state(planted):
    from rich.console import Console

    from mtlkit.study.runner import _progress_table

    study = load_study(write_study(planted))
    status = {"single_task": {"complete": 1, "pruned": 1, "running": 0, "waiting": 0, "failed": 0, "best": -0.25},
              "all_four": {"complete": 0, "pruned": 0, "running": 2, "waiting": 0, "failed": 1, "best": None},
              "related": {"complete": 2, "pruned": 0, "running": 0, "waiting": 0, "failed": 0, "best": -0.125}}
    console = Console(width=120, record=True)
    console.print(_progress_table(study, status, "tuning"))
    text = console.export_text()
    lines = {line.split()[1]: line for line in text.splitlines() if line.strip().startswith("│") and line.split()[1] in status}
    assert lines["single_task"].split()[3] == "2/2" and "-0.25" in lines["single_task"]
    assert lines["all_four"].split()[3] == "0/2" and lines["all_four"].split()[5] == "2" and "—" in lines["all_four"]
