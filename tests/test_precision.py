"""Mixed precision (bf16 autocast, fp16 with a gradient scaler) and torch.compile in the trainer.

Quality tolerance: a bf16 (or fp16) run reaches the fp32 run's test AUC within 0.01 per task on a
small two-task problem (same seed, same data). fp16 trains on CPU too (``precision: fp16,
device: cpu``: emulated, with a warning, unless the CPU has AVX512-FP16/AMX-FP16), so its
gradient-scaler logic is exercised here through the public option. The compile tests use the
``aot_eager`` backend (Dynamo capture + AOTAutograd, where retain_graph and the module wrapper
matter, without inductor's C++ build: ~15 s per graph on this box); ``benchmarks/precision.py``
runs inductor itself.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.config import load_config_text
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.errors import ConfigError
from mtlkit.models import ModelSpec, build_model
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, evaluate
from mtlkit.train.evaluate import predict_logits
from mtlkit.train.mixed_precision import FP16_GRADIENT_METHODS

from conftest import InterruptAfter
from test_trainer import assert_same, final_weights

TASKS = [Task(name="click", kind="binary"), Task(name="buy", kind="binary")]
SPEC = SchemaSpec(categorical=[CategoricalFeature(name="cat")], numeric=[NumericFeature(name="x0"), NumericFeature(name="x1")])
AUC_TOLERANCE = 0.01


def noisy_table(n: int, seed: int) -> pa.Table:
    """Two related binary tasks with label noise, so that AUC is informative (not 1.0)."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 6, n)
    x = rng.standard_normal((n, 2))
    signal = 1.5 * x[:, 0] - x[:, 1] + np.array([-1.0, 0.0, 1.0, 2.0, -2.0, 0.5])[cat]
    click = rng.random(n) < 1 / (1 + np.exp(-signal))
    buy = rng.random(n) < 1 / (1 + np.exp(-(signal - 1 + x[:, 1] * x[:, 0])))
    return pa.table({"cat": cat, "x0": x[:, 0], "x1": x[:, 1], "click": click.astype(int), "buy": buy.astype(int)})


@functools.cache
def data():
    """Schema, train (whole batches of 64), validation (selection) and test (AUC) splits."""
    train, valid, test = noisy_table(2048, 0), noisy_table(256, 2), noisy_table(2000, 1)
    schema = SPEC.fit(train)
    return schema, *(schema.encode(t, TASKS) for t in (train, valid, test))


def make(balancer="fixed", backbone="mmoe", run_dir=None, options=None, balancer_options=None, **train):
    schema, encoded, valid, _ = data()
    torch.manual_seed(0)
    options = options or ({"experts": 3, "expert_hidden": [16]} if backbone == "mmoe" else {"hidden": [16]})
    model = build_model(ModelSpec(backbone=backbone, options=options, tower=[8]), schema, TASKS)
    spec = TrainSpec(**{"epochs": 3, "batch_size": 64, "lr": 3e-3, "progress": False, "patience": None, **train})
    trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(name=balancer, options=balancer_options or {}), TASKS), spec, run_dir)
    return trainer, encoded.batches(64, shuffle=True, seed=3), valid


def fit_aucs(trainer, batches, valid) -> dict[str, float]:
    trainer.fit(batches, valid)
    return {name: r["auc"] for name, r in evaluate(trainer.model, TASKS, data()[3]).items()}


@functools.cache
def fp32_aucs(balancer: str) -> dict[str, float]:
    return fit_aucs(*make(balancer, precision="fp32"))  # the reference, whatever "auto" picks here


def record_dtypes(trainer) -> dict[str, set]:
    """The dtypes the backbone computed its representations in and the balancer's Jacobians had, during training."""
    seen = {"backbone": set(), "jacobian": set()}

    def record(module, args, out):
        if torch.is_grad_enabled():
            seen["backbone"].update(rep.dtype for rep in out.values())

    trainer.model.backbone.register_forward_hook(record)
    aggregate = getattr(trainer.balancer, "aggregate", None)
    if aggregate is not None:
        def recording(jacobian, present):
            seen["jacobian"].add(jacobian.dtype)
            return aggregate(jacobian, present)
        trainer.balancer.aggregate = recording
    return seen


@pytest.mark.parametrize("balancer", ["fixed", "pcgrad"])
def test_bf16_trains_to_fp32_quality(balancer):
    trainer, batches, valid = make(balancer, precision="bf16")
    seen = record_dtypes(trainer)
    aucs = fit_aucs(trainer, batches, valid)
    assert seen["backbone"] == {torch.bfloat16}  # autocast was on
    if balancer != "fixed":
        assert seen["jacobian"] == {torch.float32}  # Jacobians (hence Gramians) stay fp32
    expected = fp32_aucs(balancer)
    for task in expected:
        assert expected[task] > 0.7
        assert abs(aucs[task] - expected[task]) < AUC_TOLERANCE, (task, aucs, expected)


def test_low_precision_on_mps_is_a_config_error_and_fp16_on_cpu_trains():
    text = "data: {train: a.csv}\nfeatures: {numeric: [x]}\ntasks: [{name: y, kind: binary}]\ntrain: {precision: fp16, device: mps}\n"
    with pytest.raises(ConfigError, match="train.*'fp16' trains on cpu or cuda.*'mps'"):
        load_config_text(text, "run.yaml")  # caught before any work
    trainer, _, _ = make(precision="fp16", device="cpu")
    assert trainer.precision == "fp16" and trainer.scaler is not None and trainer.scaler.is_enabled()


def test_unsafe_combinations_are_config_errors():
    for name in ["nash_mtl", "db_mtl", "gradnorm", "gradvac", "aligned_mtl", "imtl_g"]:
        with pytest.raises(ConfigError, match=f"fp16 with balancer '{name}' is unsafe"):
            make(name, precision="fp16", device="cpu")
    with pytest.raises(ConfigError, match="fp16 with balancer 'mgda' is unsafe.*normalize: none"):
        make("mgda", precision="fp16", device="cpu", balancer_options={"normalize": "l2"})
    with pytest.raises(ConfigError, match="bf16 with balancer 'mgda_ub'"):
        make("mgda_ub", precision="bf16")
    with pytest.raises(ConfigError, match="compile with balancer 'mgda_ub'"):
        make("mgda_ub", compile=True)
    with pytest.raises(ConfigError, match="compile with balancer 'pcgrad'.*jacobian: loop"):
        make("pcgrad", compile=True, balancer_options={"jacobian": "batched"})


@pytest.mark.parametrize("name", FP16_GRADIENT_METHODS)
def test_fp16_gradient_methods_are_exact_under_loss_scaling(name):
    """What admits a gradient method to fp16: d(S·J) = S·d(J), and an overflowing Jacobian gives a
    non-finite update (the scaler skips the step) without raising or poisoning the next step."""
    torch.manual_seed(0)
    jacobian = torch.randn(3, 40, dtype=torch.float64)
    jacobian[1] = 0.3 * jacobian[1] - 0.6 * jacobian[0]  # conflicting tasks, so methods do something
    present, scale = torch.ones(3, dtype=torch.bool), 2.0 ** 16
    tasks = [Task(name=n, kind="binary") for n in "abc"]

    def fresh():
        balancer = build_balancer(BalancerSpec(name=name), tasks)
        balancer.step_objectives = torch.ones(3, dtype=torch.float64)
        torch.manual_seed(1)  # GradDrop draws
        return balancer

    plain = fresh().aggregate(jacobian, present)
    scaled = fresh().aggregate(scale * jacobian, present)
    torch.testing.assert_close(scaled / scale, plain)
    balancer, overflowed = fresh(), jacobian.clone()
    overflowed[0, 5] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the torchjd backend warns about the non-finite solve
        assert not torch.isfinite(balancer.aggregate(overflowed, present)).all()
    assert torch.isfinite(balancer.aggregate(jacobian, present)).all()


@pytest.mark.parametrize("balancer", ["fixed", "pcgrad"])
def test_fp16_scaler_path_trains_to_fp32_quality(monkeypatch, balancer):
    """fp16 autocast + GradScaler (on CPU here), starting from a scale that overflows: the
    overflowing steps are skipped, the scale comes down, and training reaches fp32 quality."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 24))
    trainer, batches, valid = make(balancer, precision="fp16", device="cpu", grad_clip=5.0)
    seen = record_dtypes(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lr_scheduler.step() after a skipped optimizer.step(); non-finite solves
        aucs = fit_aucs(trainer, batches, valid)
    assert seen["backbone"] == {torch.float16}
    assert trainer.scaler.get_scale() < 2.0 ** 24  # overflows happened and were skipped
    expected = fp32_aucs(balancer)
    for task in expected:
        assert abs(aucs[task] - expected[task]) < AUC_TOLERANCE, (task, aucs, expected)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resume_after_interruption_is_exact(tmp_path, monkeypatch, precision):
    """fp16 (on CPU here) starts from an overflowing scale: exact only if the checkpoint carries the scaler's state."""
    small = dict(backbone="shared_bottom", options={"hidden": [16], "dropout": 0.2}, precision=precision, epochs=2)
    if precision == "fp16":
        monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 24))
        small["device"] = "cpu"
    trainer, batches, valid = make(run_dir=tmp_path / "straight", **small)
    trainer.fit(batches, valid)
    expected = final_weights(trainer)
    trainer, batches, valid = make(run_dir=tmp_path / "resumed", **small)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(InterruptAfter(batches, 45), valid)  # mid-epoch 2
    torch.manual_seed(1234)  # a new process starts from another RNG state
    trainer, batches, valid = make(run_dir=tmp_path / "resumed", **small)
    trainer.fit(batches, valid)
    assert_same(final_weights(trainer), expected)
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()


@pytest.fixture
def aot_eager_compile(monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))


def test_compiled_training_checkpoint_loads_into_uncompiled_model(tmp_path, aot_eager_compile):
    trainer, batches, valid = make("pcgrad", run_dir=tmp_path, compile=True, precision="bf16", epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        trainer.fit(batches, valid)
    assert trainer.forward.compiled  # trained through the compiled module
    eager, batches, valid = make("pcgrad", precision="bf16", epochs=2)
    eager.fit(batches, valid)
    for key, value in final_weights(eager).items():  # same training, up to fused-kernel rounding
        torch.testing.assert_close(trainer.model.state_dict()[key], value, atol=2e-3, rtol=0)

    schema, _, _, test = data()
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / name, weights_only=True)["model"]
        assert not any(key.startswith("_orig_mod.") for key in state)
        fresh = build_model(ModelSpec(backbone="mmoe", options={"experts": 3, "expert_hidden": [16]}, tower=[8]), schema, TASKS)
        fresh.load_state_dict(state)  # strict
    expected = predict_logits(trainer.model, test)
    for task, logits in predict_logits(fresh, test).items():
        torch.testing.assert_close(logits, expected[task])


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    """The documented fallback: a warning, then the eager run, unchanged by the failed attempt
    (BatchNorm statistics and the dropout RNG are restored after the probe)."""

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler found (simulated)")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=no_compiler))
    small = dict(backbone="shared_bottom", options={"hidden": [16], "dropout": 0.2, "batch_norm": True}, epochs=1)
    trainer, batches, valid = make(compile=True, **small)
    with pytest.warns(RuntimeWarning, match="train.compile: torch.compile failed.*no C.. compiler.*training without compilation"):
        trainer.fit(batches, valid)
    assert not trainer.forward.compiled
    eager, batches, valid = make(**small)
    eager.fit(batches, valid)
    assert_same(final_weights(trainer), final_weights(eager))
