"""A run directory is resumable from its first byte (issue 12, must-exist 7).

Real ``mtlkit train`` processes are killed with SIGKILL at chosen moments — while writing
config.yaml, before schema.json, while writing the first checkpoint, and after a mid-epoch
checkpoint — then the same command, run again, finishes with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import signal
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
    "tasks": [{"name": "click", "kind": "binary"}, {"name": "buy", "kind": "binary", "mask": {"column": "click", "equals": 1}}],
    "model": {"backbone": "shared_bottom", "options": {"hidden": [8]}, "embedding_dim": 4, "tower": [4]},
    # 7 steps an epoch; last.pt after step 4 of each epoch and at each epoch's end
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "monitor": "auc", "checkpoint_every": 4, "patience": None},
}

# Runs `mtlkit train ...`, killing itself with SIGKILL when about to rename the Nth file called NAME into place.
KILLER = """
import os, signal, sys
from pathlib import Path
name, nth = sys.argv[1], int(sys.argv[2])
real, seen = os.replace, [0]
def replace(src, dst):
    if Path(dst).name == name:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
from mtlkit.cli import main
sys.argv = ["mtlkit", *sys.argv[3:]]
main()
"""

# (moment, file being renamed into place, which time, what the directory holds after the kill)
MOMENTS = [
    ("writing config.yaml", "config.yaml", 1, set()),
    ("before schema.json", "schema.json", 1, {"config.yaml"}),
    ("writing the first checkpoint", "last.pt", 1, {"config.yaml", "schema.json"}),
    ("after a mid-epoch checkpoint", "best.pt", 1, {"config.yaml", "schema.json", "last.pt"}),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resumable")
    for name, seed, n in (("train.csv", 0, 400), ("valid.csv", 1, 200), ("test.csv", 2, 200)):
        pacsv.write_csv(click_table(n, seed), root / name)
    (root / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


def train(root: Path, out: str) -> list[str]:
    return ["train", str(root / "run.yaml"), "--out", str(root / out), "--no-progress"]


def test_killed_at_any_moment_the_same_command_finishes(workdir: Path):
    result = runner.invoke(app, train(workdir, "reference"))
    assert result.exit_code == 0, result.output
    expected = json.loads((workdir / "reference" / "test_metrics.json").read_text())
    history = (workdir / "reference" / "metrics.jsonl").read_text().splitlines()

    processes = [subprocess.Popen([sys.executable, "-c", KILLER, name, str(nth), *train(workdir, f"killed-{i}")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i, (_, name, nth, _) in enumerate(MOMENTS)]
    for i, (moment, _, _, left) in enumerate(MOMENTS):
        _, stderr = processes[i].communicate(timeout=300)
        assert processes[i].returncode == -signal.SIGKILL, (moment, stderr)
        run_dir = workdir / f"killed-{i}"
        assert left <= {p.name for p in run_dir.iterdir()} and not (run_dir / "summary.json").exists(), moment

        result = runner.invoke(app, train(workdir, f"killed-{i}"))
        assert result.exit_code == 0, (moment, result.output)
        assert json.loads((run_dir / "test_metrics.json").read_text()) == expected, moment
        strip = lambda lines: [{k: v for k, v in json.loads(line).items() if "seconds" not in k} for line in lines]  # noqa: E731
        assert strip((run_dir / "metrics.jsonl").read_text().splitlines()) == strip(history), moment
        assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")], moment


def test_a_first_epoch_kill_restarts_cleanly_and_keeps_the_users_files(workdir: Path):
    """A run killed after epoch 1's best.pt and metrics but before its last.pt (no checkpoint_every)."""
    config = {**CONFIG, "train": {**CONFIG["train"], "checkpoint_every": None}}
    (workdir / "plain.yaml").write_text(yaml.safe_dump(config))
    args = lambda out: ["train", str(workdir / "plain.yaml"), "--out", str(workdir / out), "--no-progress"]  # noqa: E731
    assert runner.invoke(app, args("whole")).exit_code == 0
    half = workdir / "half"
    shutil.copytree(workdir / "whole", half)
    for name in ("last.pt", "summary.json", "test_metrics.json"):
        (half / name).unlink()
    (half / "notes.txt").write_text("mine")
    result = runner.invoke(app, args("half"))
    assert result.exit_code == 0, result.output
    assert (half / "notes.txt").read_text() == "mine"
    assert (half / "test_metrics.json").read_text() == (workdir / "whole" / "test_metrics.json").read_text()
    assert len((half / "metrics.jsonl").read_text().splitlines()) == 2  # restarted: epoch 1 is not there twice


def test_an_unfinished_run_of_another_config_is_refused_and_kept(workdir: Path):
    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 1}}
    (workdir / "one.yaml").write_text(yaml.safe_dump(config))
    out = workdir / "other"
    assert runner.invoke(app, ["train", str(workdir / "one.yaml"), "--out", str(out), "--no-progress"]).exit_code == 0
    (out / "summary.json").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = runner.invoke(app, train(workdir, "other"))
    assert result.exit_code == 2 and "another config (key 'train.epochs': 1 there, 2 now)" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    result = runner.invoke(app, [*train(workdir, "other"), "--overwrite"])
    assert result.exit_code == 0, result.output
