"""The data doctor: quiet on clean data; each planted defect found with its severity and exit code."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import yaml
from typer.testing import CliRunner

from mtlkit.cli import app
from mtlkit.doctor.frame import row_hashes

from conftest import click_table

runner = CliRunner()

CONFIG = {
    "seed": 0,
    "data": {"train": "train.csv", "validation": "valid.csv", "test": "test.csv"},
    "features": {"categorical": ["user", "item"], "numeric": [{"name": "price", "transform": "log1p"}]},
    "tasks": [
        {"name": "click", "kind": "binary"},
        {"name": "buy", "kind": "binary", "mask": {"column": "click", "equals": 1}},
    ],
    "model": {"backbone": "shared_bottom", "options": {"hidden": [8]}, "embedding_dim": 4, "tower": [4]},
    "train": {"epochs": 1, "batch_size": 128, "lr": 0.01, "monitor": "auc"},
}
SPLITS = {"train.csv": (0, 800, 0), "valid.csv": (1, 300, 800), "test.csv": (2, 300, 1100)}  # seed, rows, first time


@pytest.fixture
def workdir(tmp_path):
    for name, (seed, n, start) in SPLITS.items():
        table = click_table(n, seed)
        watch = table["click"].to_numpy() * np.random.default_rng(seed).lognormal(2, 1, n)
        table = table.append_column("watch", pa.array(watch)).append_column("ts", pa.array(np.arange(start, start + n)))
        pacsv.write_csv(table, tmp_path / name)
    return tmp_path


def write_config(directory, config=CONFIG):
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def edit(directory, name, change):
    """Rewrite one CSV: ``change`` gets a dict of numpy columns and returns it (possibly longer)."""
    table = pacsv.read_csv(directory / name)
    columns = {c: table[c].to_numpy(zero_copy_only=False).copy() for c in table.column_names}
    pacsv.write_csv(pa.table(change(columns)), directory / name)


def doctor(directory, *args):
    out = directory / "report.json"
    result = runner.invoke(app, ["doctor", str(directory / "run.yaml"), "--out", str(out), *args])
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) if out.exists() else None
    return result, report


def test_clean_data_is_quiet(workdir):
    write_config(workdir)
    result, report = doctor(workdir, "--time-column", "ts", "--strict")
    assert result.exit_code == 0, result.output
    assert report["summary"] == {"errors": 0, "warnings": 0} and report["findings"] == []
    assert "no problems found" in result.output
    stats = report["stats"]
    assert stats["label_rates"]["validation"]["buy"]["labelled"] < 300  # counted inside the click space only
    assert stats["label_correlation"]["tasks"] == ["click", "buy"] and stats["label_correlation"]["matrix"][0][1] > 0.2
    assert stats["duplicates"]["test"] == {"rows": 300, "duplicates": 0, "share": 0.0, "in_train": 0}
    assert 0.55 < stats["leakage"]["click"]["scores"]["user"] < 0.9  # informative, not leaking
    assert report["splits"]["train"]["rows"] == 800 and report["time_column"] == "ts"


def first_where(condition):
    return int(np.flatnonzero(condition)[0])


def conversion_without_click(c):
    rows = np.flatnonzero(c["click"] == 0)[:5]
    c["buy"][rows] = 1
    return c


def watch_without_click(c):
    c["watch"][np.flatnonzero(c["click"] == 0)[:3]] = 12.5
    return c


def label_two(c):
    c["click"][first_where(c["buy"] == 0)] = 2  # a row without a buy: the mask check stays quiet
    return c


def nan_and_inf(c):
    c["price"][[3, 7]] = [np.nan, np.inf]
    return c


def unseen_users(c):
    new = np.arange(len(c["user"])) % 5 < 2  # 40% of the rows
    c["user"] = np.where(new, np.char.add("new", np.arange(len(new)).astype(str)), c["user"])
    return c


def duplicated_rows(c):
    return {k: np.concatenate([v, v[:40]]) for k, v in c.items()}


def late_train(c):
    c["ts"] = c["ts"] - 100  # validation now starts at 700, before training ends (799)
    return c


def add_leak(numeric):
    def change(c):
        c["leak"] = c["click"].astype(float) if numeric else np.where(c["click"] == 1, "yes", "no")
        return c
    return change


def config_with(key, value):
    config = json.loads(json.dumps(CONFIG))
    if key == "tasks":
        config["tasks"].append(value)
    else:
        config["features"][key].append(value)
    return config


# case: (files to edit, config, extra args, expected (check, severity, split, text) findings, exit code)
DEFECTS = {
    "conversion without click": ({"valid.csv": conversion_without_click}, CONFIG, [],
                                 [("consistency", "warning", "validation", "5 of ")], 0),
    "watch time without click": ({"train.csv": watch_without_click},
                                 config_with("tasks", {"name": "watch", "kind": "regression", "mask": {"column": "click"}}), [],
                                 [("consistency", "warning", "train", "have watch != 0 where click != 1")], 0),
    "label 2 in a binary task": ({"train.csv": label_two}, CONFIG, [],
                                 [("label_values", "error", "train", "(expected 0 or 1); 1 invalid row")], 1),
    "nan and inf in a feature": ({"valid.csv": nan_and_inf}, CONFIG, [],
                                 [("feature_values", "warning", "validation", "first at data row 4"),
                                  ("feature_values", "warning", "validation", "1 infinite value")], 0),
    "leaked numeric feature": ({n: add_leak(True) for n in SPLITS}, config_with("numeric", "leak"), [],
                               [("leakage", "error", "train", "numeric feature 'leak' alone predicts the label of task 'click' (AUC 1.0000)")], 1),
    "leaked categorical feature": ({n: add_leak(False) for n in SPLITS}, config_with("categorical", "leak"), [],
                                   [("leakage", "error", "validation", "categorical feature 'leak' alone predicts")], 1),
    "unseen categories": ({"valid.csv": unseen_users}, CONFIG, [],
                          [("unseen", "warning", "validation", "120 rows (40.0%) hold 120 values never seen")], 0),
    "duplicated rows": ({"train.csv": duplicated_rows}, CONFIG, [],
                        [("duplicates", "warning", "train", "40 exact duplicate rows (4.8%), e.g. data row 801 repeats data row 1")], 0),
    "overlapping time": ({"valid.csv": late_train}, CONFIG, ["--time-column", "ts"],
                         [("time_overlap", "error", "validation", "99 rows (33.0%) are earlier than the last train row (ts 700 < 799)")], 1),
}


@pytest.mark.parametrize("case", sorted(DEFECTS))
def test_each_planted_defect_is_found(workdir, case):
    files, config, args, expected, code = DEFECTS[case]
    for name, change in files.items():
        edit(workdir, name, change)
    write_config(workdir, config)
    result, report = doctor(workdir, *args)
    assert result.exit_code == code, result.output
    found = [(f["check"], f["severity"], f["split"], f["message"]) for f in report["findings"]]
    assert len(found) == len(expected), found  # the defect, and nothing else
    for (check, severity, split, text), (f_check, f_severity, f_split, message) in zip(expected, found):
        assert (f_check, f_severity, f_split) == (check, severity, split) and text in message, message
    assert report["summary"]["errors"] == sum(s == "error" for _, s, _, _ in expected)
    if code == 0:  # warnings only: --strict turns them into a failing exit code
        assert doctor(workdir, *args, "--strict")[0].exit_code == 1


def test_default_report_path_and_bad_input(workdir, monkeypatch):
    write_config(workdir)
    monkeypatch.chdir(workdir)
    result = runner.invoke(app, ["doctor", "run.yaml"])
    assert result.exit_code == 0 and json.loads((workdir / "doctor.json").read_text())["summary"]["errors"] == 0
    result = runner.invoke(app, ["doctor", "run.yaml", "--time-column", "when"])
    assert result.exit_code == 2 and result.output.startswith("error:") and "missing column 'when'" in result.output
    result = runner.invoke(app, ["doctor", "missing.yaml"])
    assert result.exit_code == 2 and "missing.yaml: no such file" in result.output


def test_train_with_doctor(workdir):
    for name in SPLITS:
        edit(workdir, name, add_leak(True))
    write_config(workdir, config_with("numeric", "leak"))
    run_dir = workdir / "runs" / "leaky"
    result = runner.invoke(app, ["train", str(workdir / "run.yaml"), "--out", str(run_dir), "--no-progress", "--doctor"])
    assert result.exit_code == 1 and "leakage" in result.output and "nothing was trained" in result.output
    assert not run_dir.exists()

    write_config(workdir)  # the leak column is no feature any more: the doctor passes and training runs
    result = runner.invoke(app, ["train", str(workdir / "run.yaml"), "--out", str(run_dir), "--no-progress", "--time-column", "ts"])
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output and (run_dir / "summary.json").exists()


def test_row_hashes_compare_across_types_and_lists():
    a = pa.table({"x": pa.array([1, 2], pa.int64()), "tags": pa.array([["a", "b"], ["b", "a"]])})
    b = pa.table({"x": pa.array([1.0, 2.0]), "tags": pa.array([["a", "b"], None], pa.list_(pa.string()))})
    hashes = row_hashes({"a": a, "b": b}, ["x", "tags"])
    assert hashes["a"][0] == hashes["b"][0]  # int 1 == float 1.0, same list
    assert hashes["a"][1] != hashes["b"][1] and len(set(hashes["a"].tolist())) == 2  # order inside a list matters
