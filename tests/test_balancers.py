"""Properties every balancer must have.

* it can be built from YAML through ``BalancerSpec``;
* the result does not depend on the order in which tasks are listed;
* a task with no labelled row in the batch (masked loss exactly 0) contributes exactly what an
  absent task contributes — nothing — and never a NaN, even when every task is empty;
* methods that promise it never conflict with a task gradient (MGDA, UPGrad, DualProj; PCGrad
  with two tasks), and the check catches a method that does (equal weighting);
* it trains inside the Trainer with masked tasks, and resuming from an interruption gives the same
  weights as the uninterrupted run (its state is in the checkpoint).
"""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from torch import nn

from mtlkit.balancing import BALANCERS, BalancerSpec, build_balancer
from mtlkit.data.schema import NumericFeature, SchemaSpec
from mtlkit.errors import ConfigError
from mtlkit.models import ModelSpec, MultiTaskModel, build_model
from mtlkit.protocols import TrainableModel
from mtlkit.tasks import Task, TaskMask
from mtlkit.train import Trainer, TrainSpec

from conftest import InterruptAfter

LOSS_LEVEL = ["fixed", "uncertainty", "dwa", "rlw", "gls", "scheduled", "famo", "stch"]
GRADIENT_LEVEL = ["db_mtl", "gradnorm", "mgda", "mgda_ub", "pcgrad", "cagrad", "imtl_g", "nash_mtl",
                  "aligned_mtl", "upgrad", "dualproj", "gradvac", "graddrop",
                  "moco", "fairgrad", "excess_mtl", "modo", "sdmgrad"]
ALL = LOSS_LEVEL + GRADIENT_LEVEL
# Options a method needs (or that make the test exercise more of it).
OPTIONS = {
    "uncertainty": {"default_kind": "regression", "kinds": {"a": "classification"}},
    "scheduled": {"gamma": {"a": 0.9, "b": 1.1}, "unit": "step"},
    "mgda": {"normalize": "loss+"},
    "mgda_ub": {"normalize": "l2"},
    "graddrop": {"leak": {"a": 0.2}},
}
SOLVER_TOLERANCE = {"nash_mtl": 2e-3, "cagrad": 2e-3, "fairgrad": 2e-3}  # iterative conic solvers


def build(name: str, tasks, weights=None):
    cls = BALANCERS.get(name)
    return cls(list(tasks), cls.Options(**OPTIONS.get(name, {})), weights)


def test_every_method_is_registered():
    assert set(ALL) == set(BALANCERS.names())  # a new balancer must join the property tests below


@pytest.mark.parametrize("name", ALL)
def test_built_from_yaml(name):
    text = yaml.safe_dump({"balancer": {"name": name, "options": OPTIONS.get(name, {})}})
    spec = BalancerSpec(**yaml.safe_load(text)["balancer"])
    tasks = [Task(name="a", kind="binary", loss_weight=2.0), Task(name="b", kind="regression"), Task(name="c", kind="regression")]
    balancer = build_balancer(spec, tasks)
    assert type(balancer) is BALANCERS.get(name)
    assert set(balancer.current_weights()) == {"a", "b", "c"}


def test_bad_options_are_rejected_before_training():
    with pytest.raises(ValueError, match="temperature"):
        BalancerSpec(name="dwa", options={"temperature": 0})
    with pytest.raises(ValueError, match="solver"):
        BalancerSpec(name="mgda", options={"solver": "simplex"})
    with pytest.raises(ValueError, match="extra"):
        BalancerSpec(name="upgrad", options={"pref": [1, 2]})
    with pytest.raises(ConfigError, match="default_kind"):  # the kind of task "a" is unknown
        BALANCERS.get("uncertainty")(["a"], BALANCERS.get("uncertainty").Options())


# -- a small model: shared trunk, one head per task ----------------------------------------------
class Tiny(TrainableModel):
    def __init__(self, tasks):
        super().__init__(sorted(tasks))
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in sorted(tasks)})

    def shared_parameters(self):
        return self.trunk.parameters()

    def forward(self, x):
        z = self.trunk(x)
        self.last_shared_features = z  # the representation hook MGDA-UB reads
        return {t: h(z).squeeze(-1) for t, h in self.heads.items()}


g = torch.Generator().manual_seed(0)
X = torch.randn(32, 5, generator=g)
TARGETS = {"a": (X[:, 0] > 0).float(), "b": 3 * X[:, 1] - X[:, 0], "c": -2 * X[:, 0] + torch.sin(X[:, 2])}
TASK = {"a": Task(name="a", kind="binary"), "b": Task(name="b", kind="regression"), "c": Task(name="c", kind="regression")}
LAMBDA = {"a": 1.0, "b": 2.0, "c": 0.5}


def train_steps(name, order, empty=(), drop=(), steps=3):
    """A few SGD steps; returns the final parameters and the last step's gradients."""
    model = Tiny(order)
    balancer = build(name, order, LAMBDA)
    opt = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=0.05)
    for step in range(steps):
        out = model(X)
        losses = {}
        for t in order:
            if t in drop:
                continue
            mask = torch.zeros(32, dtype=torch.bool) if t in empty else torch.ones(32, dtype=torch.bool)
            losses[t] = TASK[t].compute_loss(out[t], TARGETS[t], mask=mask)
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(100 + step)  # random methods draw the same numbers in both runs
        balancer.backward(losses, model)
        grads = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}
        opt.step()
        balancer.epoch_end(step, {t: float(losses[t].detach()) for t in losses})
    return {k: p.detach().clone() for k, p in model.named_parameters()}, grads


def assert_close(a, b, name, what):
    tol = SOLVER_TOLERANCE.get(name, 1e-5)
    for key in a:
        assert torch.isfinite(a[key]).all() and torch.isfinite(b[key]).all(), (what, key)
        assert torch.allclose(a[key], b[key], rtol=tol, atol=tol), (what, key, (a[key] - b[key]).abs().max())


@pytest.mark.parametrize("name", [n for n in ALL if n != "rlw"])  # RLW draws one weight per position
def test_task_order_does_not_matter(name):
    order = ["a", "b"] if name in ("pcgrad", "gradvac") else ["a", "b", "c"]  # random visiting order for T > 2
    params, grads = train_steps(name, order)
    params_r, grads_r = train_steps(name, list(reversed(order)))
    assert_close(grads, grads_r, name, "gradients")
    assert_close(params, params_r, name, "parameters")


@pytest.mark.parametrize("name", ALL)
def test_task_without_labelled_rows_contributes_nothing(name):
    params_masked, grads_masked = train_steps(name, ["a", "b", "c"], empty={"b"})
    params_absent, grads_absent = train_steps(name, ["a", "b", "c"], drop={"b"})
    assert_close(grads_masked, grads_absent, name, "gradients")
    assert_close(params_masked, params_absent, name, "parameters")
    assert not grads_masked["heads.b.weight"].any()
    assert grads_masked["trunk.0.weight"].abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_batch_where_every_task_is_empty_gives_finite_zero_gradients(name):
    params, grads = train_steps(name, ["a", "b", "c"], empty={"a", "b", "c"}, steps=2)
    for key, grad in grads.items():
        assert torch.isfinite(grad).all(), key
        assert not grad.any(), key
    assert all(torch.isfinite(p).all() for p in params.values())


# -- non-conflicting updates ------------------------------------------------------------------------
class Probe(TrainableModel):
    """``L_k = J_k·θ``: the task gradients are exactly the rows of J."""

    def __init__(self, n):
        super().__init__([])
        self.theta = nn.Parameter(torch.zeros(n))

    def shared_parameters(self):
        return iter([self.theta])


def update(name, jacobian):
    tasks = [f"t{i}" for i in range(len(jacobian))]
    model = Probe(jacobian.shape[1])
    balancer = build(name, tasks)
    balancer.backward({t: row @ model.theta for t, row in zip(tasks, jacobian)}, model)
    return model.theta.grad


def conflicts(jacobian, d):
    """Whether some task gradient makes an obtuse angle with the update (beyond round-off)."""
    return bool((jacobian @ d < -1e-5 * jacobian.norm(dim=1) * d.norm()).any())


@pytest.mark.parametrize("name,t", [("mgda", 2), ("mgda", 4), ("upgrad", 4), ("dualproj", 4), ("pcgrad", 2)])
def test_update_conflicts_with_no_task_gradient(name, t):
    gen = torch.Generator().manual_seed(t)
    for _ in range(20):
        jacobian = torch.randn(t, 6, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 3.0][:t])[:, None]
        d = update(name, jacobian)
        assert torch.isfinite(d).all() and d.norm() > 0
        assert not conflicts(jacobian, d), (jacobian, d)


def test_the_conflict_check_fails_for_equal_weighting():
    jacobian = torch.tensor([[1.0, 0.0], [-4.0, 1.0]])
    assert conflicts(jacobian, update("fixed", jacobian))
    assert not conflicts(jacobian, update("mgda", jacobian))


# -- inside the trainer: masked tasks, checkpoints, exact resumption -------------------------------
TRAIN_TASKS = [
    Task(name="click", kind="binary"),
    Task(name="buy", kind="binary", mask=TaskMask(column="click")),
    Task(name="y", kind="regression", loss_weight=0.5),
]
TRAIN_OPTIONS = {"uncertainty": {"kinds": {"click": "classification", "buy": "classification", "y": "regression"}},
                 "scheduled": {"gamma": {"y": 0.8}}}


def click_table(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    click = (x[:, 0] + 0.3 * rng.standard_normal(n) > 1.0).astype(int)  # rare: many batches have no buy rows
    return pa.table({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "click": click,
                     "buy": ((x[:, 1] > 0) & (click == 1)).astype(int), "y": x[:, 2] - x[:, 0]})


class WithSharedFeatures(MultiTaskModel):
    """The proposed MultiTaskModel hook: keep the shared representation of the last forward."""

    def representations(self, inputs):
        reps = super().representations(inputs)
        self.last_shared_features = next(iter(reps.values()))  # shared-bottom: one tensor for all tasks
        return reps


def trainer_for(name, run_dir):
    schema = SchemaSpec(numeric=[NumericFeature(name=f"x{i}") for i in range(3)]).fit(click_table(192, 0))
    torch.manual_seed(0)
    model = build_model(ModelSpec(options={"hidden": [16], "dropout": 0.1}, tower=[4]), schema, TRAIN_TASKS)
    if name == "mgda_ub":
        model.__class__ = WithSharedFeatures
    balancer = build_balancer(BalancerSpec(name=name, options=TRAIN_OPTIONS.get(name, {})), TRAIN_TASKS)
    spec = TrainSpec(epochs=3, batch_size=32, lr=0.01, progress=False, patience=None, grad_clip=5.0)
    train = schema.encode(click_table(192, 0), TRAIN_TASKS).batches(32, shuffle=True, seed=1)
    return Trainer(model, TRAIN_TASKS, balancer, spec, run_dir), train, schema.encode(click_table(64, 1), TRAIN_TASKS)


@pytest.mark.parametrize("name", ALL)
def test_trains_with_masked_tasks_and_resumes_exactly(name, tmp_path):
    trainer, train, valid = trainer_for(name, tmp_path / "straight")
    result = trainer.fit(train, valid)
    assert all(np.isfinite(r["train/buy/loss"]) and np.isfinite(r["val/y/rmse"]) for r in result.history)
    expected = copy.deepcopy(trainer.model.state_dict())

    trainer, train, valid = trainer_for(name, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(InterruptAfter(train, 14), valid)  # in the third epoch: DWA's history is in play
    torch.manual_seed(1234)
    trainer, train, valid = trainer_for(name, tmp_path / "resumed")
    trainer.fit(train, valid)
    assert_close(trainer.model.state_dict(), expected, name, "resumed weights")


@pytest.mark.parametrize("t", [2, 3, 5])
def test_cagrad_slsqp_dual_matches_torchjds_cvxpy_formulation(t):
    """The default SLSQP solver (the official code's) and torchjd's cvxpy one give the same update."""
    tasks = [Task(name=f"t{i}", kind="binary") for i in range(t)]
    fast = build_balancer(BalancerSpec(name="cagrad"), tasks)
    reference = build_balancer(BalancerSpec(name="cagrad", options={"solver": "cvxpy"}), tasks)
    generator = torch.Generator().manual_seed(t)
    present = torch.ones(t, dtype=torch.bool)
    for k in range(6):
        jacobian = torch.randn(t, 30, generator=generator, dtype=torch.float64) * (1 + 5 * torch.rand(t, 1, generator=generator, dtype=torch.float64))
        if k % 2:  # a conflicting pair
            jacobian[1] = -0.7 * jacobian[0] + 0.2 * jacobian[1]
        gramian = jacobian @ jacobian.T
        d_fast = fast.weights(gramian, present) @ jacobian
        d_ref = reference.weights(gramian, present) @ jacobian
        assert torch.linalg.norm(d_fast - d_ref) <= 1e-3 * torch.linalg.norm(d_ref)


def test_nash_mtl_newton_solves_the_bargaining_condition_exactly():
    """α ⊙ Gα = 1 to machine precision, warm-started across changing Gramians; the same as cvxpy fresh."""
    t = 3
    tasks = [Task(name=f"t{i}", kind="binary") for i in range(t)]
    newton = build_balancer(BalancerSpec(name="nash_mtl", options={"max_norm": 0.0}), tasks)
    present = torch.ones(t, dtype=torch.bool)
    generator = torch.Generator().manual_seed(3)
    converged = 0
    for k in range(10):
        jacobian = torch.randn(t, 40, generator=generator, dtype=torch.float64) * 0.3 * torch.rand(t, 1, generator=generator, dtype=torch.float64)
        if k % 3 == 0:
            jacobian[1] = -0.5 * jacobian[0] + 0.3 * jacobian[1]
        gramian = jacobian @ jacobian.T
        alpha = newton.weights(gramian, present)
        assert (alpha * (gramian @ alpha) - 1).abs().max() < 1e-8
        fresh = build_balancer(BalancerSpec(name="nash_mtl", options={"max_norm": 0.0, "solver": "cvxpy"}), tasks)
        reference = fresh.weights(gramian, present)
        if (reference * (gramian @ reference) - 1).abs().max() < 1e-6:  # where torchjd's port converged
            converged += 1
            assert torch.allclose(reference, alpha, rtol=1e-4)
    assert converged >= 5
