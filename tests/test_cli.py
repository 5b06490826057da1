import json
import subprocess
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
import yaml
from typer.testing import CliRunner

from mtlkit.cli import app

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
    "model": {"backbone": "shared_bottom", "options": {"hidden": [16]}, "embedding_dim": 4, "tower": [8]},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.01, "monitor": "auc"},
}


@pytest.fixture
def workdir(tmp_path):
    for name, seed, n in (("train.csv", 0, 800), ("valid.csv", 1, 300), ("test.csv", 2, 300)):
        pacsv.write_csv(click_table(n, seed), tmp_path / name)
    return tmp_path


def write_config(directory: Path, config: dict, name: str = "run.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_evaluate_predict(workdir):
    config = write_config(workdir, CONFIG)
    run_dir = workdir / "runs" / "r1"
    result = runner.invoke(app, ["train", str(config), "--out", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "schema.json", "best.pt", "last.pt", "metrics.jsonl", "metrics.csv", "summary.json", "test_metrics.json"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["click"]["auc"] > 0.6  # the labels depend on user, item and price
    assert summary["test"]["buy"]["rows"] < 300  # conversion is scored on clicked rows only

    result = runner.invoke(app, ["evaluate", str(run_dir), "--json", str(workdir / "eval.json")])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((workdir / "eval.json").read_text())
    assert evaluated["test"]["click"]["auc"] == pytest.approx(summary["test"]["click"]["auc"])

    features_only = click_table(20, 5).drop_columns(["click", "buy"])
    pacsv.write_csv(features_only, workdir / "new.csv")
    out = workdir / "pred.csv"
    result = runner.invoke(app, ["predict", str(run_dir), str(workdir / "new.csv"), "--out", str(out), "--keep", "user"])
    assert result.exit_code == 0, result.output
    predictions = pacsv.read_csv(out)
    assert predictions.column_names == ["user", "click", "buy"] and predictions.num_rows == 20
    assert all(0 < p < 1 for p in predictions["click"].to_pylist())

    # A finished run is not silently overwritten.
    result = runner.invoke(app, ["train", str(config), "--out", str(run_dir), "--no-progress"])
    assert result.exit_code == 2 and "already holds a finished run" in result.output


def test_same_config_same_metrics(workdir):
    config = write_config(workdir, CONFIG)
    summaries = []
    for name in ("a", "b"):
        assert runner.invoke(app, ["train", str(config), "--out", str(workdir / name), "--no-progress"]).exit_code == 0
        summaries.append(json.loads((workdir / name / "test_metrics.json").read_text()))
    assert summaries[0] == summaries[1]


def broken(workdir, change):
    config = json.loads(json.dumps(CONFIG))
    change(config, workdir)
    return write_config(workdir, config)


def set_key(path, value):
    def change(config, workdir):
        node = config
        for key in path[:-1]:
            node = node[key] if not isinstance(node, list) else node[int(key)]
        if isinstance(node, list):
            node[int(path[-1])] = value
        else:
            node[path[-1]] = value
    return change


def write_file(name, text):
    def change(config, workdir):
        (workdir / name).write_text(text)
    return change


BAD_INPUTS = {
    "unknown key": (set_key(["model", "hiden"], 3), "key 'model.hiden': unknown key"),
    "unknown nested option": (set_key(["model", "options", "hiden"], [3]), "hiden"),
    "unknown task key": (set_key(["tasks", "0", "colour"], "red"), "key 'tasks.0.colour': unknown key"),
    "missing feature column": (set_key(["features", "categorical"], ["user", "shop"]), "train.csv: missing column 'shop'"),
    "missing label column": (set_key(["tasks", "0", "label"], "clicked"), "missing column 'clicked'"),
    "bad label value": (write_file("valid.csv", "user,item,price,click,buy\nu1,1,2.0,0,0\nu2,2,3.0,7,0\n"),
                        "valid.csv: label column 'click' of task 'click', data row 2: value 7.0 (expected 0 or 1)"),
    "empty data file": (write_file("test.csv", ""), "test.csv: the file is empty"),
    "header only": (write_file("test.csv", "user,item,price,click,buy\n"), "test.csv: has a header but no rows"),
    "malformed csv": (write_file("test.csv", "user,item,price,click,buy\nu1,1,2.0\n"), "test.csv: cannot be read as a table"),
    "missing file": (set_key(["data", "test"], "nope.csv"), "nope.csv: no such file"),
    "unknown backbone": (set_key(["model", "backbone"], "mmmoe"), "unknown backbone 'mmmoe'"),
    "bad monitor": (set_key(["train", "monitor"], "gauc"), "train.monitor"),
    "negative lr": (set_key(["train", "lr"], -1), "key 'train.lr'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_error_and_no_run(workdir, case):
    change, expected = BAD_INPUTS[case]
    config = broken(workdir, change)
    run_dir = workdir / "runs" / "bad"
    result = runner.invoke(app, ["train", str(config), "--out", str(run_dir), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert expected in result.output.replace("\n", " ") or expected in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) <= 2
    assert not run_dir.exists()


@pytest.mark.parametrize("text, expected", [
    ("", "the file is empty"),
    ("data: [unclosed\n", "malformed YAML at line"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_malformed_config_files(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and expected in result.output
    assert not (tmp_path / "run").exists()


def test_real_entry_point_exit_code_and_stderr(tmp_path):
    process = subprocess.run([sys.executable, "-m", "mtlkit.cli", "train", str(tmp_path / "missing.yaml")],
                             capture_output=True, text=True)
    assert process.returncode == 2
    assert process.stdout == "" and process.stderr.strip() == f"error: {tmp_path / 'missing.yaml'}: no such file"


def test_evaluate_rejects_a_non_run(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "not a trained mtlkit run" in result.output


def test_interrupted_run_resumes(workdir, monkeypatch):
    config = write_config(workdir, {**CONFIG, "train": {**CONFIG["train"], "epochs": 4}})
    run_dir = workdir / "run"
    assert runner.invoke(app, ["train", str(config), "--out", str(run_dir), "--no-progress"]).exit_code == 0
    expected = json.loads((run_dir / "test_metrics.json").read_text())

    from mtlkit.train import trainer as trainer_module

    original = trainer_module.Trainer._select
    calls = {"n": 0}

    def interrupt_after_two_epochs(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(trainer_module.Trainer, "_select", interrupt_after_two_epochs)
    resumed_dir = workdir / "resumed"
    result = runner.invoke(app, ["train", str(config), "--out", str(resumed_dir), "--no-progress"])
    assert result.exit_code != 0 and not (resumed_dir / "summary.json").exists()
    monkeypatch.setattr(trainer_module.Trainer, "_select", original)
    result = runner.invoke(app, ["train", str(config), "--out", str(resumed_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((resumed_dir / "test_metrics.json").read_text()) == expected


def test_demo_quick(tmp_path):
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = pacsv.read_csv(tmp_path / "demo_results.csv")
    assert set(rows["correlation"].to_pylist()) == {0.5, 0.9, 1.0}
    assert "single_task" in rows["backbone"].to_pylist() and "shared_bottom" in rows["backbone"].to_pylist()
    assert (tmp_path / "demo_results.png").stat().st_size > 10_000


def test_tensorboard_without_the_extra_is_a_clear_error(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    config = write_config(workdir, {**CONFIG, "train": {**CONFIG["train"], "tensorboard": True}})
    result = runner.invoke(app, ["train", str(config), "--out", str(workdir / "tb")])
    assert result.exit_code == 2 and "mtlkit[tensorboard]" in result.output
    assert not (workdir / "tb").exists()


def test_seeded_split_when_only_train_is_given(workdir):
    config = {**CONFIG, "data": {"train": "train.csv", "split": {"validation": 0.25, "test": 0.25, "seed": 7}}}
    path = write_config(workdir, config)
    result = runner.invoke(app, ["train", str(path), "--out", str(workdir / "split"), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "split" / "summary.json").read_text())
    assert summary["validation"]["click"]["rows"] == 200 and summary["test"]["click"]["rows"] == 200


def test_gated_backbone_run_writes_and_shows_gate_diagnostics(workdir):
    config = {**CONFIG, "model": {"backbone": "mmoe", "options": {"experts": 3, "expert_hidden": [8]}, "embedding_dim": 4}}
    path = write_config(workdir, config)
    run_dir = workdir / "gated"
    assert runner.invoke(app, ["train", str(path), "--out", str(run_dir), "--no-progress"]).exit_code == 0
    assert (run_dir / "gates.csv").exists() and (run_dir / "gates.png").exists()
    first_epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert {"gates/click/entropy", "gates/buy/collapsed"} <= set(first_epoch)
    result = runner.invoke(app, ["evaluate", str(run_dir), "--json", str(workdir / "e.json")])
    assert result.exit_code == 0 and "gates" in result.output and "entropy" in result.output
    gates = json.loads((workdir / "e.json").read_text())["gates"]
    assert sum(gates["click"]["mean_weight"]) == pytest.approx(1.0, abs=1e-5)
