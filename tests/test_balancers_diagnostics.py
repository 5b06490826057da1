"""Gradient diagnostics: per-task norms and cosines on the shared part, CSV and PNG output, and a
wrapper that monitors any balancer inside the trainer without changing its training."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.diagnostics.gradients import GradientMonitor, MonitoredBalancer, read_gradient_csv, task_gradient_stats
from mtlkit.train import Trainer

from conftest import InterruptAfter
from test_balancers import TARGETS, TASK, TRAIN_TASKS, Tiny, X, trainer_for


def losses_of(model, tasks, empty=()):
    out = model(X)
    return {t: TASK[t].compute_loss(out[t], TARGETS[t], mask=torch.full((32,), t not in empty)) for t in tasks}


def test_stats_match_the_per_task_gradients():
    model = Tiny(["a", "b", "c"])
    losses = losses_of(model, ["a", "b", "c"], empty={"c"})
    norms, cos = task_gradient_stats(losses, model, ["a", "b", "c"])
    shared = list(model.trunk.parameters())
    g = [torch.cat([x.flatten() for x in torch.autograd.grad(losses[t], shared, retain_graph=True)]) for t in "ab"]
    assert torch.allclose(norms[:2], torch.stack([g[0].norm(), g[1].norm()]), rtol=1e-5)
    assert float(cos[0, 1]) == pytest.approx(float(g[0] @ g[1] / (g[0].norm() * g[1].norm())), rel=1e-5)
    assert float(cos[0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(float(norms[2])) and torch.isnan(cos[2]).all()  # no labelled rows: no gradient


def test_monitor_writes_csv_and_png_every_n_steps(tmp_path):
    tasks = ["a", "b"]
    model = Tiny(tasks)
    monitor = GradientMonitor(tasks, every=2, out_dir=tmp_path)
    for step in range(5):
        monitor.record(step, losses_of(model, tasks), model)
    assert [s for s, _, _ in monitor.pending] == [0, 2, 4]
    rows = monitor.flush()
    assert monitor.pending == [] and [r["step"] for r in rows] == [0, 2, 4]
    on_disk = read_gradient_csv(tmp_path / "gradients.csv")
    assert list(on_disk[0]) == ["step", "norm/a", "norm/b", "cos/a/b"]
    assert [r["step"] for r in on_disk] == [0, 2, 4]
    assert all(-1 <= r["cos/a/b"] <= 1 and r["norm/a"] > 0 for r in on_disk)
    assert (tmp_path / "gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A resumed run that recomputes steps 2 and 4 replaces them instead of duplicating them.
    for step in (2, 4, 6):
        monitor.record(step, losses_of(model, tasks), model)
    monitor.flush()
    assert [r["step"] for r in read_gradient_csv(tmp_path / "gradients.csv")] == [0, 2, 4, 6]


def test_monitored_balancer_trains_exactly_like_the_bare_one(tmp_path):
    bare, train, valid = trainer_for("mgda", tmp_path / "bare")
    bare.fit(train, valid)
    expected = copy.deepcopy(bare.model.state_dict())

    trainer, train, valid = trainer_for("mgda", tmp_path / "monitored")
    inner = build_balancer(BalancerSpec(name="mgda"), TRAIN_TASKS)
    monitor = GradientMonitor([t.name for t in TRAIN_TASKS], every=4, out_dir=tmp_path / "monitored")
    monitored = Trainer(trainer.model, TRAIN_TASKS, MonitoredBalancer(inner, monitor), trainer.spec, tmp_path / "monitored")
    monitored.fit(train, valid)
    for key, value in monitored.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    rows = read_gradient_csv(tmp_path / "monitored" / "gradients.csv")
    assert [r["step"] for r in rows] == [0, 4, 8, 12, 16]  # 3 epochs × 6 steps, every 4
    assert all(r["norm/click"] > 0 and -1 <= r["cos/click/y"] <= 1 for r in rows)
    assert (tmp_path / "monitored" / "gradients.png").exists()
    assert monitored.balancer.state_dict()["_extra_state"] == {"steps": 18}  # resumes its step count


def monitored_trainer(run_dir):
    trainer, train, valid = trainer_for("pcgrad", run_dir)
    monitor = GradientMonitor([t.name for t in TRAIN_TASKS], every=4, out_dir=run_dir)
    return Trainer(trainer.model, TRAIN_TASKS, MonitoredBalancer(trainer.balancer, monitor), trainer.spec, run_dir), train, valid


def test_monitored_run_resumed_after_ctrl_c_has_every_row_once(tmp_path):
    trainer, train, valid = monitored_trainer(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(InterruptAfter(train, 14), valid)  # step 12 is recorded, then Ctrl-C at step 14
    trainer, train, valid = monitored_trainer(tmp_path)
    trainer.fit(train, valid)
    assert [r["step"] for r in read_gradient_csv(tmp_path / "gradients.csv")] == [0, 4, 8, 12, 16]
