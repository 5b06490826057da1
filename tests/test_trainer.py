import json

import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.models import ModelSpec, build_model
from mtlkit.train import Trainer, TrainSpec
from test_models import SPEC, TASKS, toy_table

from conftest import InterruptAfter


def make(run_dir=None, backbone="shared_bottom", **train):
    table, valid = toy_table(400, 0), toy_table(200, 1)
    schema = SPEC.fit(table)
    torch.manual_seed(0)
    # Dropout makes the global RNG matter, so resumption must restore it.
    model = build_model(ModelSpec(backbone=backbone, options={"hidden": [16], "dropout": 0.2}, tower=[4]), schema, TASKS)
    spec = TrainSpec(**{"epochs": 4, "batch_size": 32, "progress": False, "patience": None, **train})
    trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(), TASKS), spec, run_dir)
    return trainer, schema.encode(table, TASKS).batches(32, shuffle=True, seed=3), schema.encode(valid, TASKS)


def final_weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("interrupt_at_step", [13, 26])  # mid-epoch, and exactly at an epoch end
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, interrupt_at_step):
    trainer, batches, valid = make(tmp_path / "straight")
    trainer.fit(batches, valid)
    expected = final_weights(trainer)
    history = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()

    trainer, batches, valid = make(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(InterruptAfter(batches, interrupt_at_step), valid)
    torch.manual_seed(1234)  # a new process would start from a different RNG state
    trainer, batches, valid = make(tmp_path / "resumed")
    trainer.fit(batches, valid)
    assert_same(final_weights(trainer), expected)
    resumed = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(history) == 4
    assert [json.loads(r) for r in resumed] == [json.loads(h) for h in history]


def test_periodic_checkpoints_resume_exactly(tmp_path):
    trainer, batches, valid = make(tmp_path / "a", checkpoint_every=5)
    trainer.fit(batches, valid)
    expected = final_weights(trainer)
    trainer, batches, valid = make(tmp_path / "b", checkpoint_every=5)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(InterruptAfter(batches, 17), valid)
    trainer, batches, valid = make(tmp_path / "b", checkpoint_every=5)
    trainer.fit(batches, valid)
    assert_same(final_weights(trainer), expected)


def test_same_seed_same_result():
    results = []
    for _ in range(2):
        trainer, batches, valid = make()
        results.append(trainer.fit(batches, valid).history)
    assert results[0] == results[1]


def test_checkpoints_load_with_weights_only(tmp_path):
    trainer, batches, valid = make(tmp_path)
    trainer.fit(batches, valid)
    for name in ("last.pt", "best.pt"):
        torch.load(tmp_path / name, weights_only=True)
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 5  # header + 4 epochs


def test_best_epoch_is_chosen_on_validation_and_restored():
    trainer, batches, valid = make(epochs=6, lr=0.05)  # a high rate makes validation loss bounce
    result = trainer.fit(batches, valid)
    scores = [r["score"] for r in result.history]
    best = max(range(len(scores)), key=scores.__getitem__)
    assert result.best_epoch["model"] == best + 1
    from mtlkit.train import evaluate

    restored = evaluate(trainer.model, TASKS, valid)
    assert restored["a"]["loss"] == pytest.approx(result.best_results["a"]["loss"], rel=1e-6)


def test_early_stopping_stops_after_patience():
    trainer, batches, valid = make(epochs=50, lr=0.2, patience=2)
    result = trainer.fit(batches, valid)
    assert result.stopped_early
    assert len(result.history) == max(result.best_epoch.values()) + 2


def test_single_task_models_select_their_own_best_epoch():
    trainer, batches, valid = make(backbone="single_task", epochs=8, lr=0.05)
    result = trainer.fit(batches, valid)
    assert set(result.best_epoch) == {"a", "b", "c"}
    for task in ("a", "b", "c"):
        losses = [r[f"val/{task}/loss"] for r in result.history]
        assert result.best_epoch[task] == losses.index(min(losses)) + 1
        assert result.best_results[task]["loss"] == min(losses)
    assert len(set(result.best_epoch.values())) > 1, "the tasks should peak at different epochs here"


def test_unknown_monitor_is_a_config_error():
    from mtlkit.errors import ConfigError

    with pytest.raises(ConfigError, match="train.monitor"):
        make(monitor="gauc")


def test_each_task_with_its_own_dataset():
    """Heterogeneous data: task a's rows carry no label for b and vice versa."""
    from mtlkit.data.batch import EncodedTable
    from mtlkit.data.multi import PerTaskBatches

    tasks = TASKS[:2]
    schema = SPEC.fit(toy_table(400, 0))
    full = schema.encode(toy_table(600, 0), tasks)
    only = lambda name, rows: EncodedTable(  # noqa: E731
        {k: v[rows] for k, v in full.inputs.items()}, {name: full.targets[name][rows]}, {name: full.masks[name][rows]})
    tables = {"a": only("a", slice(0, 400)), "b": only("b", slice(400, 600))}
    valid = schema.encode(toy_table(300, 1), tasks)
    for schedule in ("round", "single"):
        torch.manual_seed(0)
        model = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [16]}), schema, tasks)
        trainer = Trainer(model, tasks, build_balancer(BalancerSpec(), tasks),
                          TrainSpec(epochs=10, batch_size=32, lr=0.01, progress=False, patience=None))
        result = trainer.fit(PerTaskBatches(tables, 32, schedule=schedule), valid)
        assert result.best_results["a"]["auc"] > 0.9, schedule
        assert result.best_results["b"]["rmse"] < 1.0, schedule
        steps = 13 if schedule == "round" else 13 + 7
        assert result.history[0]["step"] == steps


def test_trainer_adds_the_backbones_regularization_loss():
    """SNR's L0 penalty is not a task loss: the trainer back-propagates it besides the balancer."""
    from mtlkit.balancing.base import LossWeighting

    class NoTaskLoss(LossWeighting):
        def combine(self, losses):
            return sum(loss * 0 for loss in losses.values())

    table = toy_table(200, 0)
    schema = SPEC.fit(table)
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="snr_aver", options={"l0_weight": 1.0}), schema, TASKS)
    before = model.regularization_loss().item()
    trainer = Trainer(model, TASKS, NoTaskLoss([t.name for t in TASKS], NoTaskLoss.Options()),
                      TrainSpec(epochs=10, batch_size=32, lr=0.2, progress=False, patience=None))
    trainer.fit(schema.encode(table, TASKS).batches(32), schema.encode(table, TASKS))
    assert model.regularization_loss().item() < 0.8 * before  # only the penalty can have closed codes


def test_weight_decay_spares_the_balancers_parameters():
    """AdamW decays model weights only: uncertainty log-variances train exactly as without decay."""
    table = toy_table(200, 0)
    schema = SPEC.fit(table)
    log_vars, undecayed = {}, None
    for decay in (0.0, 5.0):
        torch.manual_seed(0)
        model = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [8]}), schema, TASKS)
        balancer = build_balancer(BalancerSpec(name="uncertainty", options={"init": 1.0}), TASKS)
        trainer = Trainer(model, TASKS, balancer, TrainSpec(epochs=1, batch_size=32, lr=0.01, optimizer="adamw",
                                                            weight_decay=decay, progress=False, patience=None))
        trainer.fit(schema.encode(table, TASKS).batches(32), schema.encode(table, TASKS))
        log_vars[decay] = balancer.log_vars.detach().clone()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        if decay:
            assert undecayed is not None and not torch.allclose(weights, undecayed)  # decay does reach the model
        undecayed = weights
    # Decayed, they would shrink by (1 - 0.01·5)^7 ≈ 0.7; the model's slightly different losses move them < 1e-3.
    assert torch.allclose(log_vars[0.0], log_vars[5.0], atol=1e-2)
    assert not torch.allclose(log_vars[0.0], torch.ones_like(log_vars[0.0]))  # they did train


def test_weight_decay_skips_biases_and_norm_scales():
    table = toy_table(100, 0)
    schema = SPEC.fit(table)
    model = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [8], "batch_norm": True}), schema, TASKS)
    trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(), TASKS),
                      TrainSpec(optimizer="adamw", weight_decay=0.1, progress=False))
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    matrices = {id(p) for p in model.parameters() if p.ndim > 1}
    assert decayed == matrices and any(p.ndim == 1 for p in model.parameters())


def test_progress_aware_models_hear_the_fraction_of_training_done():
    trainer, train, valid = make(epochs=2)
    heard = []
    trainer.model.set_training_progress = heard.append  # the model's hook, as the trainer calls it
    trainer.fit(train, valid)
    steps = 2 * len(train)
    assert heard == [step / steps for step in range(steps)]  # before every step, from 0 up to (steps-1)/steps
