"""The trainer wiring of balancers: representation hook (MGDA-UB), gradient diagnostics, task kinds."""

import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.schema import NumericFeature, SchemaSpec
from mtlkit.diagnostics.gradients import gradient_diagnostics, read_gradient_csv
from mtlkit.models import ModelSpec, build_model
from mtlkit.train import Trainer, TrainSpec

from conftest import InterruptAfter
from test_balancers import TRAIN_TASKS, click_table


def make(run_dir, balancer="mgda_ub", backbone="shared_bottom", **kw):
    schema = SchemaSpec(numeric=[NumericFeature(name=f"x{i}") for i in range(3)]).fit(click_table(192, 0))
    torch.manual_seed(0)
    opts = {"hidden": [16]} if backbone == "shared_bottom" else {"experts": 3, "expert_hidden": [8]}
    model = build_model(ModelSpec(backbone=backbone, options=opts, tower=[4]), schema, TRAIN_TASKS)
    spec = TrainSpec(epochs=3, batch_size=32, lr=0.01, progress=False, patience=None, **kw)
    train = schema.encode(click_table(192, 0), TRAIN_TASKS).batches(32, shuffle=True, seed=1)
    callbacks = gradient_diagnostics(spec, [t.name for t in TRAIN_TASKS], run_dir)  # what mtlkit.run passes
    trainer = Trainer(model, TRAIN_TASKS, build_balancer(BalancerSpec(name=balancer), TRAIN_TASKS), spec, run_dir, callbacks)
    return trainer, train, schema.encode(click_table(64, 1), TRAIN_TASKS)


@pytest.mark.parametrize("backbone", ["shared_bottom", "mmoe"])

def test_mgda_ub_runs_on_the_real_model(tmp_path, backbone):
    t, train, valid = make(tmp_path, backbone=backbone)
    t.fit(train, valid)
    assert t.model.last_shared_features is None


def test_diagnostics_from_the_train_spec_and_resume(tmp_path):
    t, train, valid = make(tmp_path / "a", balancer="pcgrad", grad_diagnostics_every=4)
    t.fit(train, valid)
    rows = read_gradient_csv(tmp_path / "a" / "gradients.csv")
    assert [r["step"] for r in rows] == [0, 4, 8, 12, 16]
    t, train, valid = make(tmp_path / "b", balancer="pcgrad", grad_diagnostics_every=4)
    with pytest.raises(KeyboardInterrupt):
        t.fit(InterruptAfter(train, 14), valid)
    t, train, valid = make(tmp_path / "b", balancer="pcgrad", grad_diagnostics_every=4)
    t.fit(train, valid)
    assert [r["step"] for r in read_gradient_csv(tmp_path / "b" / "gradients.csv")] == [0, 4, 8, 12, 16]
    assert (tmp_path / "b" / "gradients.png").exists()


def test_uncertainty_gets_the_kinds_from_the_tasks():
    b = build_balancer(BalancerSpec(name="uncertainty"), TRAIN_TASKS)
    assert b.current_weights() == {"click": 1.0, "buy": 1.0, "y": 0.5 * 0.5}
