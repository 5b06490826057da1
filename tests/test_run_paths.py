"""A run started from Python with relative data paths stores them absolute (relative to the working
directory it was started from), so `mtlkit evaluate RUN` works from any other directory."""

import json
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
import yaml
from typer.testing import CliRunner

from mtlkit.cli import app
from mtlkit.config import RunConfig
from mtlkit.run import train_run
from test_cli import CONFIG

from conftest import SHARED_DATA, click_table

runner = CliRunner()


def test_tabular_run_from_python_evaluates_from_another_directory(tmp_path, monkeypatch):
    project = tmp_path.resolve() / "project"
    (project / "data").mkdir(parents=True)
    for name, seed, n in (("train.csv", 0, 600), ("valid.csv", 1, 200), ("test.csv", 2, 200)):
        pacsv.write_csv(click_table(n, seed), project / "data" / name)
    monkeypatch.chdir(project)
    config = RunConfig.model_validate({**CONFIG, "train": {**CONFIG["train"], "epochs": 1, "progress": False},
                                       "data": {"train": "data/train.csv", "validation": "data/valid.csv", "test": "data/test.csv"}})
    summary = train_run(config, "runs/x")
    stored = yaml.safe_load((project / "runs" / "x" / "config.yaml").read_text())["data"]
    assert {k: Path(stored[k]) for k in ("train", "validation", "test")} == {
        "train": project / "data" / "train.csv", "validation": project / "data" / "valid.csv", "test": project / "data" / "test.csv"}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["evaluate", str(project / "runs" / "x"), "--json", "metrics.json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((elsewhere / "metrics.json").read_text())
    assert metrics["test"]["click"]["auc"] == pytest.approx(summary["test"]["click"]["auc"])


def test_a_loaded_config_keeps_its_paths_relative_to_its_own_folder(tmp_path, monkeypatch):
    project = tmp_path.resolve() / "project"
    (project / "data").mkdir(parents=True)
    pacsv.write_csv(click_table(400, 0), project / "data" / "train.csv")
    (project / "run.yaml").write_text(yaml.safe_dump({**CONFIG, "data": {"train": "data/train.csv"},
                                                      "train": {**CONFIG["train"], "epochs": 1}}))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    result = runner.invoke(app, ["train", "project/run.yaml", "--out", "runs/y", "--no-progress"])
    assert result.exit_code == 0, result.output
    stored = yaml.safe_load((tmp_path / "runs" / "y" / "config.yaml").read_text())["data"]
    assert Path(stored["train"]) == project / "data" / "train.csv"


def test_nlp_run_from_python_evaluates_from_another_directory(tmp_path, monkeypatch):
    from mtlkit.nlp.config import parse_nlp_config
    from mtlkit.nlp.run import train_nlp_run

    from tiny_bert import save_tiny_bert

    nlp = SHARED_DATA / "nlp"
    save_tiny_bert(tmp_path / "bert", [(nlp / "sst2" / "train.tsv", 60)])
    monkeypatch.chdir(nlp)  # read-only: only the data is read from here
    rows = {"train": 24, "validation": 8}
    config = parse_nlp_config({
        "encoder": {"name": str(tmp_path / "bert")},
        "train": {"epochs": 1, "batch_size": 8, "progress": False, "patience": None},
        "tasks": [{"name": "sst2", "kind": "classification", "max_length": 24,
                   "data": {"train": "sst2/train.tsv", "validation": "sst2/dev.tsv", "format": "glue_tsv", "max_rows": rows}}]})
    run = tmp_path / "runs" / "nlp"
    summary = train_nlp_run(config, run)
    task = yaml.safe_load((run / "config.yaml").read_text())["tasks"][0]["data"]
    assert [Path(p) for p in task["train"]] == [(nlp / "sst2" / "train.tsv").resolve()]

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", str(run), "--json", "metrics.json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["validation"]["sst2"]["accuracy"] == pytest.approx(summary["validation"]["sst2"]["accuracy"])
