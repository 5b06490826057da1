"""Progress off a terminal: plain lines every `log_every_seconds` and at epoch ends; the config's
`train.progress` under `mtlkit train`, unless --progress / --no-progress says otherwise."""

import io
import re
import subprocess
import sys

import pyarrow.csv as pacsv
import pytest
import torch
from typer.testing import CliRunner

from mtlkit.cli import app
from mtlkit.train.progress import LogLines, RichBar, epoch_progress
from test_cli import CONFIG, write_config

from conftest import click_table
from test_trainer import make

runner = CliRunner()

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d epoch (\d+)/(\d+) step (\d+)/(\d+) \(\d+%\) \| ([\d,]+) samples/s \| "
                  r"elapsed \S+( \| ETA epoch \S+, run \S+)? \| loss a ([\d.]+) b ([\d.]+) c ([\d.]+)$")


def test_off_a_terminal_a_line_per_interval_with_step_rate_eta_and_running_losses(capsys):
    trainer, batches, valid = make(epochs=2, progress=True, log_every=1000, log_every_seconds=1e-9)
    result = trainer.fit(batches, valid)
    lines = [line for line in capsys.readouterr().out.splitlines() if " step " in line]
    steps = len(batches)
    assert len(lines) == 2 * steps  # the interval is tiny: every step is due
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines[0]
    assert [(int(m[1]), int(m[3])) for m in parsed] == [(e, s) for e in (1, 2) for s in range(1, steps + 1)]
    assert all(int(m[4]) == steps and int(m[2]) == 2 and int(m[5].replace(",", "")) > 0 for m in parsed)
    assert all(m[6] for m in parsed if int(m[3]) < steps)  # an ETA until the epoch's last step
    for epoch, record in enumerate(result.history, 1):  # the epoch-end line carries the epoch's mean losses
        last = parsed[epoch * steps - 1]
        for group, task in zip((7, 8, 9), "abc"):
            assert float(last[group]) == pytest.approx(record[f"train/{task}/loss"], abs=1e-4)


def test_a_long_interval_prints_at_epoch_ends_only_and_reads_losses_back_no_more_often(capsys, monkeypatch):
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or original(self))

    def count(**train):
        reads.clear()
        trainer, batches, valid = make(epochs=2, log_every=1000, **train)
        trainer.fit(batches, valid)
        return len(reads), len(batches)

    quiet, steps = count(progress=False)
    shown, _ = count(progress=True, log_every_seconds=3600)
    lines = [line for line in capsys.readouterr().out.splitlines() if " step " in line]
    assert [line.split(" | ")[0].split(" ", 2)[2] for line in lines] == [f"epoch {e}/2 step {steps}/{steps} (100%)" for e in (1, 2)]
    assert shown == quiet  # no read-back of the running losses beyond the ones training does anyway
    every_step, _ = count(progress=True, log_every_seconds=1e-9)
    assert every_step > quiet  # (the counter sees the read-backs a due line costs)


def test_progress_false_prints_no_step_lines(capsys):
    trainer, batches, valid = make(epochs=1, progress=False, log_every_seconds=1e-9)
    trainer.fit(batches, valid)
    assert " step " not in capsys.readouterr().out


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_the_bar_anything_else_lines():
    assert isinstance(epoch_progress(True, 0, 1, 10, 0, 30.0, stream=Terminal()), RichBar)
    assert isinstance(epoch_progress(True, 0, 1, 10, 0, 30.0, stream=io.StringIO()), LogLines)
    assert type(epoch_progress(False, 0, 1, 10, 0, 30.0, stream=io.StringIO())).__name__ == "EpochProgress"


def test_lines_follow_the_clock_not_the_steps():
    now = [0.0]
    out = io.StringIO()
    lines = LogLines(epoch=0, epochs=3, total=100, start=20, every_seconds=30, stream=out, clock=lambda: now[0])
    for step in range(21, 101):
        now[0] += 1.0  # one step a second: due at steps 50 and 80, and at the end
        if lines.due(step):
            lines.update(step, 32 * (step - 20), {"a": 1.0})
    text = out.getvalue().splitlines()
    assert [re.search(r"step (\d+)/", line)[1] for line in text] == ["50", "80", "100"]
    assert "32 samples/s" in text[0]  # 30 steps of 32 rows in 30 s
    assert "ETA epoch 50s, run 4m10s" in text[0]  # 50 steps left in this epoch, 200 more in the next two


def workdir(tmp_path, **train):
    for name, seed, n in (("train.csv", 0, 800), ("valid.csv", 1, 300), ("test.csv", 2, 300)):
        pacsv.write_csv(click_table(n, seed), tmp_path / name)
    return write_config(tmp_path, {**CONFIG, "train": {**CONFIG["train"], "epochs": 2, **train}})


def train_cli(config, out, *flags) -> str:
    """`mtlkit train` with stdout redirected to a file, as under nohup or a scheduler."""
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "mtlkit.cli", "train", str(config), "--out", str(out), *flags],
                              stdout=f, stderr=subprocess.STDOUT, cwd=config.parent)
    text = log.read_text()
    assert done.returncode == 0, text
    return text


def test_cli_redirected_to_a_file_logs_progress(tmp_path):
    text = train_cli(workdir(tmp_path, log_every_seconds=0.001), tmp_path / "shown")
    steps = -(-800 // 64)
    assert re.search(rf"epoch 2/2 step {steps}/{steps} \(100%\) \| [\d,]+ samples/s \| .* \| loss click \S+ buy \S+", text), text
    assert "epoch 1 validation:" in text


def test_cli_flag_overrides_the_config_which_decides_without_one(tmp_path):
    def shown(config, out, *flags) -> bool:
        result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / out), *flags])  # output captured: no terminal
        assert result.exit_code == 0, result.output
        return " step " in result.output

    quiet = workdir(tmp_path, log_every_seconds=0.001, progress=False)
    assert not shown(quiet, "config_off")  # train.progress: false, no flag
    assert shown(quiet, "flag_on", "--progress")
    assert not shown(workdir(tmp_path, log_every_seconds=0.001), "flag_off", "--no-progress")
