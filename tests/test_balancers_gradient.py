"""Gradient-level methods: MGDA's solvers, MGDA-UB's representation hook, GradNorm (with the toy
problem of Chen et al. §4), DB-MTL's EMA, the torchjd adapter and the Jacobian itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkit.balancing import BALANCERS, torchjd_backend
from mtlkit.balancing.db_mtl import DBMTL
from mtlkit.balancing.fixed import FixedWeights
from mtlkit.balancing.gradient import flat_jacobian
from mtlkit.balancing.gradnorm import GradNorm
from mtlkit.balancing.mgda import MGDA, exact_min_norm, frank_wolfe, min_norm_two, min_norm_weights
from mtlkit.balancing.mgda_ub import MGDAUB
from mtlkit.balancing.nash_mtl import NashMTL
from mtlkit.balancing.upgrad import UPGrad
from mtlkit.errors import ConfigError
from mtlkit.protocols import TrainableModel

from test_balancers import LAMBDA, TARGETS, TASK, Probe, Tiny, X, conflicts, update

BOTH = torch.tensor([True, True])


# -- MGDA ------------------------------------------------------------------------------------------
def test_two_task_closed_form_equalises_the_projections():
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    w = min_norm_weights(jacobian @ jacobian.T, BOTH)
    assert torch.allclose(w, torch.tensor([0.6, 0.4]))  # γ = (g2 − g1)ᵀg2 / ‖g1 − g2‖² = 3/5
    d = update("mgda", jacobian)
    assert torch.allclose(d, torch.tensor([0.2, 0.4]))
    assert torch.allclose(jacobian @ d, (d @ d).repeat(2))  # g_kᵀd = ‖d‖² for both tasks


@pytest.mark.parametrize("g1,g2,gamma", [
    ((1.0, 0.0), (3.0, 0.0), 1.0),  # g1ᵀg2 ≥ g1ᵀg1: d = g1, the shorter one
    ((3.0, 0.0), (1.0, 0.0), 0.0),  # g1ᵀg2 ≥ g2ᵀg2: d = g2
    ((2.0, 0.0), (1.0, 1.0), 0.0),  # the second case at equality
    ((1.0, 1.0), (1.0, 1.0), 1.0),  # identical gradients: the first case
    ((1.0, 0.0), (0.0, 2.0), 0.8),  # interior: γ = 4 / 5
])
def test_two_task_clamping_cases(g1, g2, gamma):
    jacobian = torch.tensor([g1, g2])
    G = jacobian @ jacobian.T
    assert float(min_norm_two(G[0, 0], G[0, 1], G[1, 1])) == pytest.approx(gamma)
    assert torch.allclose(update("mgda", jacobian), gamma * jacobian[0] + (1 - gamma) * jacobian[1])


def test_two_task_closed_form_is_the_minimum_over_the_segment():
    gen = torch.Generator().manual_seed(0)
    grid = torch.linspace(0, 1, 10001)
    for _ in range(50):
        jacobian = torch.randn(2, 3, generator=gen)
        w = min_norm_weights(jacobian @ jacobian.T, BOTH)
        brute = ((grid[:, None] * jacobian[0] + (1 - grid[:, None]) * jacobian[1]) ** 2).sum(1).min()
        assert (w @ jacobian).pow(2).sum() <= brute + 1e-6


@pytest.mark.parametrize("t", [3, 4, 6])
def test_frank_wolfe_exact_and_torchjd_reach_the_same_minimum(t):
    from torchjd.aggregation import MGDAWeighting

    gen = torch.Generator().manual_seed(t)
    present = torch.ones(t, dtype=torch.bool)
    for _ in range(10):
        jacobian = torch.randn(t, 8, generator=gen, dtype=torch.float64) * torch.rand(t, 1, generator=gen, dtype=torch.float64) * 3
        G = jacobian @ jacobian.T
        exact = exact_min_norm(G, present)
        fw_short, fw = frank_wolfe(G, present, 100), frank_wolfe(G, present, 1000)
        reference = MGDAWeighting(epsilon=1e-6, max_iters=1000)(G)  # torchjd's Frank-Wolfe
        for w in (exact, fw):
            assert w.min() >= 0 and float(w.sum()) == pytest.approx(1.0)
        objective = {name: float(w @ G @ w) for name, w in
                     (("exact", exact), ("fw", fw), ("fw_short", fw_short), ("torchjd", reference))}
        # Optimality of the min-norm point d = Jᵀw: g_kᵀd ≥ ‖d‖² for every k (equality on the support).
        assert (G @ exact >= objective["exact"] - 1e-9 * G.diagonal().max()).all()
        assert objective["exact"] <= min(objective["fw"], objective["torchjd"]) * (1 + 1e-9)
        # Frank-Wolfe with exact line search only goes down, but slowly: over 100 random problems
        # per T, 1000 steps left a median gap of 0.3 % and a worst one of 14 % at T = 5.
        assert objective["fw"] <= objective["fw_short"] * (1 + 1e-12)
        assert objective["fw"] <= objective["exact"] * 1.2


@pytest.mark.parametrize("solver", ["exact", "frank_wolfe"])
def test_absent_task_gets_no_weight_in_any_solver(solver):
    jacobian = torch.tensor([[1.0, 0.0], [5.0, 5.0], [-1.0, 1.0]])
    present = torch.tensor([True, False, True])
    w = min_norm_weights(jacobian @ jacobian.T, present, solver, max_iter=500)
    assert w[1] == 0
    assert torch.allclose(w[[0, 2]], torch.tensor([0.6, 0.4]), atol=1e-3)
    assert not min_norm_weights(torch.zeros(3, 3), torch.zeros(3, dtype=torch.bool), solver).any()


@pytest.mark.parametrize("normalize", ["l2", "loss", "loss+"])
def test_normalised_mgda_still_conflicts_with_no_task(normalize):
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        jacobian = torch.randn(3, 5, generator=gen) * torch.tensor([[0.1], [1.0], [30.0]])
        tasks = ["t0", "t1", "t2"]
        model = Probe(5)
        balancer = MGDA(tasks, MGDA.Options(normalize=normalize))
        offset = torch.tensor([1.0, 2.0, 3.0])  # positive losses for the "loss" normalisations
        balancer.backward({t: row @ model.theta + c for t, row, c in zip(tasks, jacobian, offset)}, model)
        assert not conflicts(jacobian, model.theta.grad)


# -- MGDA-UB ----------------------------------------------------------------------------------------
def task_losses(model, tasks):
    out = model(X)
    return {t: TASK[t].compute_loss(out[t], TARGETS[t]) for t in tasks}


def test_mgda_ub_solves_on_the_representation_and_backpropagates_through_it():
    tasks = ["a", "b", "c"]
    model = Tiny(tasks)
    losses = task_losses(model, tasks)
    z = model.last_shared_features
    f = [LAMBDA[t] * losses[t] for t in tasks]
    jz = torch.stack([torch.autograd.grad(fk, z, retain_graph=True)[0].flatten() for fk in f])
    w = min_norm_weights(jz @ jz.T, torch.ones(3, dtype=torch.bool))
    trunk, heads = list(model.trunk.parameters()), list(model.heads.parameters())
    expected_trunk = torch.autograd.grad(sum(wk * fk for wk, fk in zip(w, f)), trunk, retain_graph=True)
    expected_heads = torch.autograd.grad(sum(f), heads, retain_graph=True)

    balancer = MGDAUB(tasks, MGDAUB.Options(), LAMBDA)
    balancer.backward(losses, model)
    assert torch.allclose(balancer.last_weights, w, atol=1e-6)
    for p, g in zip([*trunk, *heads], [*expected_trunk, *expected_heads]):
        assert torch.allclose(p.grad, g, atol=1e-6)
    assert model.last_shared_features is None  # consumed: never reused by a later step


class Gated(Tiny):
    """A shared parameter read after the representation (like an MMoE gate)."""

    def __init__(self, tasks):
        super().__init__(tasks)
        self.gate = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def shared_parameters(self):
        yield from self.trunk.parameters()
        yield self.gate

    def forward(self, x):
        z = self.trunk(x)
        self.last_shared_features = z
        return {t: h(z * self.gate).squeeze(-1) for t, h in self.heads.items()}


def test_mgda_ub_gives_shared_parameters_after_the_representation_the_weighted_gradient():
    tasks = ["a", "b"]
    model = Gated(tasks)
    balancer = MGDAUB(tasks, MGDAUB.Options())
    balancer.backward(task_losses(model, tasks), model)
    w = balancer.last_weights
    losses = task_losses(model, tasks)  # same parameters, a fresh graph
    expected = torch.autograd.grad(sum(wk * losses[t] for wk, t in zip(w, tasks)), model.gate)[0]
    assert torch.allclose(model.gate.grad, expected, atol=1e-6) and model.gate.grad.abs().sum() > 0


@pytest.mark.parametrize("model_cls", [Tiny, Gated])
def test_mgda_ub_later_steps_match_the_first_steps_gradients(model_cls):
    """From step 2 on, heads and downstream gradients come out of the Jacobian passes: same result."""
    tasks = ["a", "b", "c"]
    model = model_cls(tasks)
    balancer = MGDAUB(tasks, MGDAUB.Options(), LAMBDA)
    grads = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        balancer.backward(task_losses(model, tasks), model)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert balancer._downstream  # the second step took the single-traversal path
    for first, second in zip(*grads):
        assert torch.allclose(first, second, atol=1e-6)


def test_mgda_ub_needs_the_hook_or_an_explicit_fallback():
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    model = Probe(2)
    losses = {t: row @ model.theta for t, row in zip(["a", "b"], jacobian)}
    with pytest.raises(ConfigError, match="last_shared_features"):
        MGDAUB(["a", "b"], MGDAUB.Options()).backward(losses, model)
    MGDAUB(["a", "b"], MGDAUB.Options(fallback_to_parameters=True)).backward(losses, model)
    assert torch.allclose(model.theta.grad, torch.tensor([0.2, 0.4]))


# -- GradNorm ---------------------------------------------------------------------------------------
def test_gradnorm_weights_learn_only_from_the_gradnorm_loss():
    tasks = ["a", "b", "c"]
    model = Tiny(tasks)
    balancer = GradNorm(tasks, GradNorm.Options(alpha=0.5), LAMBDA)
    balancer.backward(task_losses(model, tasks), model)  # step 1 records L(0)
    with torch.no_grad():
        balancer.task_weights.copy_(torch.tensor([2.0, 0.5, 0.5]))
    model.zero_grad()
    balancer.task_weights.grad = None
    losses = task_losses(model, tasks)
    f = torch.stack([LAMBDA[t] * losses[t] for t in tasks])
    layer = model.trunk[2].weight  # the last shared weight matrix
    norms = torch.stack([torch.autograd.grad(fk, layer, retain_graph=True)[0].norm() for fk in f])
    w = torch.tensor([2.0, 0.5, 0.5], requires_grad=True)
    ratio = f.detach() / balancer.initial_losses
    target = (w * norms).detach().mean() * (ratio / ratio.mean()) ** 0.5
    expected_w_grad = torch.autograd.grad((w * norms - target).abs().sum(), w)[0]
    expected_model = torch.autograd.grad((w.detach() * f).sum(), list(model.parameters()), retain_graph=True)

    balancer.backward(losses, model)
    assert torch.allclose(balancer.task_weights.grad, expected_w_grad, rtol=1e-5)
    for p, g in zip(model.parameters(), expected_model):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_gradnorm_renormalises_the_weights_to_the_number_of_tasks():
    tasks = ["a", "b", "c"]
    model = Tiny(tasks)
    balancer = GradNorm(tasks, GradNorm.Options())
    with torch.no_grad():
        balancer.task_weights.copy_(torch.tensor([3.0, 1.0, 2.0]))
    balancer.backward(task_losses(model, tasks), model)
    assert sum(balancer.current_weights().values()) == pytest.approx(3.0)
    assert list(balancer.current_weights().values()) == pytest.approx([1.5, 0.5, 1.0])


def test_gradnorm_layer_option_names_a_parameter():
    with pytest.raises(ConfigError, match="not a parameter"):
        GradNorm(["a"], GradNorm.Options(layer="trunk.9.weight")).layer(Tiny(["a"]))
    assert GradNorm(["a"], GradNorm.Options(layer="trunk.0.weight")).layer(Tiny(["a"])).shape == (16, 5)


class ToyNet(TrainableModel):
    """Chen et al. §4: a 4-layer ReLU trunk of 100 units and one affine layer per task."""

    def __init__(self):
        super().__init__(["t0", "t1"])
        layers, width = [], 250
        for _ in range(4):
            layers += [nn.Linear(width, 100), nn.ReLU()]
            width = 100
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList([nn.Linear(100, 100) for _ in range(2)])

    def shared_parameters(self):
        return self.trunk.parameters()

    def forward(self, x):
        z = self.trunk(x)
        return [head(z) for head in self.heads]


def gradnorm_toy(method, steps=1000):
    """f_i(x) = σ_i tanh((B + ε_i)x), B ~ N(0, 10²), ε_i ~ N(0, 3.5²), σ = (1, 100); Adam, batch 100."""
    gen = torch.Generator().manual_seed(0)
    sigmas = [1.0, 100.0]
    B = 10.0 * torch.randn(100, 250, generator=gen)
    maps = [B + 3.5 * torch.randn(100, 250, generator=gen) for _ in sigmas]
    x, x_test = torch.randn(4000, 250, generator=gen), torch.randn(2000, 250, generator=gen)
    y = [s * torch.tanh(x @ m.T) for s, m in zip(sigmas, maps)]
    y_test = [s * torch.tanh(x_test @ m.T) for s, m in zip(sigmas, maps)]
    torch.manual_seed(0)
    net, names = ToyNet(), ["sigma1", "sigma100"]
    balancer = GradNorm(names, GradNorm.Options(alpha=0.12)) if method == "gradnorm" else FixedWeights(names, FixedWeights.Options())
    opt = torch.optim.Adam([*net.parameters(), *balancer.parameters()], lr=1e-3)

    def train_losses():
        with torch.no_grad():
            return torch.tensor([((o - t) ** 2).mean() for o, t in zip(net(x), y)])

    initial, ratios = train_losses(), []
    for step in range(steps):
        idx = torch.randint(0, len(x), (100,), generator=gen)
        out = net(x[idx])
        opt.zero_grad(set_to_none=True)
        balancer.backward({n: ((o - t[idx]) ** 2).mean() for n, o, t in zip(names, out, y)}, net)
        opt.step()
        if step >= steps - 300 and step % 100 == 99:
            ratios.append(train_losses() / initial)  # L̃_i = L_i(t) / L_i(0) on the training set
    with torch.no_grad():
        normalised_test = sum(float(((o - t) ** 2).mean()) / s**2 for o, t, s in zip(net(x_test), y_test, sigmas))
    spread = max(float(r.max() / r.min()) for r in ratios)
    return balancer.current_weights(), spread, normalised_test


def test_gradnorm_toy_problem_of_chen_et_al():
    weights, spread, test_loss = gradnorm_toy("gradnorm")
    equal_weights, equal_spread, equal_test_loss = gradnorm_toy("fixed")
    assert weights["sigma100"] < weights["sigma1"]  # the large-scale task is damped (measured: 0.05 vs 1.95)
    assert sum(weights.values()) == pytest.approx(2.0, abs=1e-5)
    # Band: the two normalised training-loss ratios L̃_i stay within a factor 1.6 of each other over
    # the last 300 steps (measured ~1.3); equal weighting lets task σ=1 fall behind (measured ~2.2).
    assert spread < 1.6 < equal_spread
    # Task-normalised test loss Σ_i MSE_i / σ_i²: measured 1.95 vs 2.6 for equal weighting.
    assert test_loss < 0.9 * equal_test_loss


# -- DB-MTL -----------------------------------------------------------------------------------------
def test_db_mtl_smooths_and_rescales_the_log_loss_gradients():
    b = DBMTL(["a", "b", "c"], DBMTL.Options())
    j1 = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    j2 = torch.tensor([[1.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    present = torch.tensor([True, True, False])
    b.aggregate(j1, present)
    d = b.aggregate(j2, present)
    ema = j2 + 0.9 / 2**0.5 * (0.1 * j1 - j2)  # ĝ = g + (β / t^σ)(ĝ − g), t = 2
    ema[2] = 0
    norms = ema.norm(dim=1)
    expected = (norms[:2].max() / (norms[:2] + 1e-8)) @ ema[:2]
    assert torch.allclose(d, expected, atol=1e-6)
    b.aggregate(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), torch.tensor([True, False, False]))
    assert torch.allclose(b.ema[1], ema[1])  # an absent task keeps its EMA


def test_db_mtl_trains_towers_on_the_log_loss():
    tasks = ["a", "b"]
    model = Tiny(tasks)
    losses = task_losses(model, tasks)
    expected = torch.autograd.grad(torch.log(losses["b"] + 1e-8), model.heads["b"].weight, retain_graph=True)[0]
    DBMTL(tasks, DBMTL.Options()).backward(losses, model)
    assert torch.allclose(model.heads["b"].weight.grad, expected, atol=1e-6)


# -- torchjd adapter --------------------------------------------------------------------------------
def test_upgrad_is_scale_free_and_non_conflicting_with_tiny_gradients():
    # torchjd's defaults treat a Gramian with trace < 1e-4 as 0 (UPGrad then returns the mean).
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [-3.0, 1.0, 0.0], [0.0, -2.0, 0.1]])
    b = UPGrad(["a", "b", "c"], UPGrad.Options())
    present = torch.ones(3, dtype=torch.bool)
    w = b.weights(jacobian @ jacobian.T, present)
    w_tiny = b.weights(1e-8 * jacobian @ jacobian.T, present)
    assert torch.allclose(w, w_tiny, rtol=1e-5)
    assert not conflicts(jacobian, w @ jacobian)
    assert not torch.allclose(w / w.sum(), torch.full((3,), 1 / 3), atol=1e-2)  # not the mean


def test_nash_mtl_solves_the_bargaining_equations():
    b = NashMTL(["a", "b", "c"], NashMTL.Options(max_norm=0.0))
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.0, 0.3, 0.5]])
    G = jacobian @ jacobian.T
    w = b.weights(G, torch.ones(3, dtype=torch.bool))
    assert torch.allclose(w * (G @ w), torch.ones(3), atol=5e-3)  # α_k (Gα)_k = 1


def test_torchjd_options_and_missing_dependency_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown tasks"):
        BALANCERS.get("upgrad")(["a"], BALANCERS.get("upgrad").Options(pref_vector={"z": 1.0}))

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(torchjd_backend.importlib, "import_module", missing)
    with pytest.raises(ConfigError, match="pip install"):
        BALANCERS.get("pcgrad")(["a", "b"], BALANCERS.get("pcgrad").Options())


# -- the Jacobian -----------------------------------------------------------------------------------
def test_batched_and_looped_jacobians_agree():
    tasks = ["a", "b", "c"]
    model = Tiny(tasks)
    losses = task_losses(model, tasks)
    params = list(model.trunk.parameters())
    f = [losses[t] for t in tasks]
    batched, looped = flat_jacobian(f, params, "batched"), flat_jacobian(f, params, "loop")
    assert batched.shape == (3, sum(p.numel() for p in params))
    assert torch.allclose(batched, looped, atol=1e-6)
    assert torch.allclose(batched[1], torch.cat([g.flatten() for g in torch.autograd.grad(f[1], params, retain_graph=True)]))
