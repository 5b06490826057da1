"""Mixture-of-experts backbones: gates, wiring, batched experts, gate dropout, SNR codes, learning."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.models import BACKBONES, ModelSpec, MultiTaskModel, build_model
from mtlkit.models.mmoe import MMoE
from mtlkit.models.ple import CGC, PLE
from mtlkit.models.snr import SNRAver, SNRTrans
from mtlkit.models.youtube_mmoe import YouTubeMMoE
from mtlkit.nn import MLP
from mtlkit.nn.experts import BatchedLinear, ExpertBank, shared_input_linears
from mtlkit.nn.gates import Gates, gate_dropout, smooth_step
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, evaluate

TASKS = ["a", "b", "c"]


# Every gated configuration, small enough to be quick; several exercise non-default options.
GATED = {
    "mmoe": {"experts": 3, "expert_hidden": [8]},
    "omoe": {"experts": 3, "expert_hidden": [8]},
    "mmoe_dselect_5": {"experts": 5, "expert_hidden": [8], "gate": "dselect_k", "k": 2},
    "mmoe_gate_dropout": {"experts": 4, "expert_hidden": [8], "gate_dropout": 0.3},
    "youtube_mmoe": {"bottom": [12], "experts": 3, "expert_hidden": [8]},
    "dselect_k": {"experts": 8, "expert_hidden": [8], "k": 3, "gamma": 2.0},
    "cgc": {"experts_per_task": 2, "shared_experts": 1, "expert_hidden": [8]},
    "ple": {"levels": 3, "experts_per_task": 1, "shared_experts": 2, "expert_hidden": [8, 6]},
    "ple_dselect": {"levels": 2, "experts_per_task": 2, "shared_experts": 1, "expert_hidden": [8], "gate": "dselect_k"},
}
UNGATED = {
    "snr_trans": {"subnetworks": 3, "hidden": [8, 6]},
    "snr_aver": {"subnetworks": 3, "hidden": [8, 8]},
    "cross_stitch": {"hidden": [8, 6]},
}
CONFIGS = {**GATED, **UNGATED}


def registry_name(config: str) -> str:
    return {"mmoe_dselect_5": "mmoe", "mmoe_gate_dropout": "mmoe", "ple_dselect": "ple"}.get(config, config)


def make_backbone(config: str, input_dim: int = 6, tasks=TASKS):
    cls = BACKBONES.get(registry_name(config))
    return cls(input_dim, tasks, cls.Options(**CONFIGS[config]))


def test_every_new_backbone_is_registered_and_configured_here():
    # The 2022–2024 backbones (and ppnet, PEPNet without EPNet) are tested in test_ranking_backbones.py.
    new = set(BACKBONES.names()) - {"shared_bottom", "single_task", "adatt", "home", "pepnet", "ppnet", "dbmtl", "stem", "star",
                                        "metaheac"}
    assert new == {registry_name(c) for c in CONFIGS}


# -- gates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(GATED))
@pytest.mark.parametrize("training", [False, True])
def test_gates_are_distributions(config, training):
    torch.manual_seed(0)
    bb = make_backbone(config).train(training)
    weights = bb.gate_weights(3 * torch.randn(64, 6))
    labels = bb.gate_experts()
    assert set(weights) == set(labels) and weights
    for gate, w in weights.items():
        assert w.shape == (64, len(labels[gate])), gate
        assert (w >= 0).all(), gate
        torch.testing.assert_close(w.sum(-1), torch.ones(64), atol=1e-5, rtol=0)


def test_mmoe_gate_weights_are_the_weights_forward_uses():
    torch.manual_seed(0)
    bb = MMoE(6, TASKS, MMoE.Options(experts=3, expert_hidden=[5]))
    x = torch.randn(10, 6)
    experts = bb.experts(x)  # (B, E, d)
    out, weights = bb(x), bb.gate_weights(x)
    for task in TASKS:
        torch.testing.assert_close(out[task], (weights[task][:, :, None] * experts).sum(1))
    # MMoE's task gates differ; OMoE has one gate for everyone.
    assert not torch.allclose(weights["a"], weights["b"])
    omoe = BACKBONES.get("omoe")(6, TASKS, MMoE.Options(experts=3, expert_hidden=[5]))
    shared = omoe(x)
    assert list(omoe.gate_weights(x)) == ["shared"] and torch.equal(shared["a"], shared["c"])


def test_smooth_step_is_exact_at_the_ends():
    t = torch.tensor([-2.0, -0.5, -0.25, 0.0, 0.25, 0.5, 2.0])
    s = smooth_step(t, gamma=1.0)
    assert s[0] == 0 and s[1] == 0 and s[-2] == 1 and s[-1] == 1 and s[3] == 0.5
    assert 0 < s[2] < 0.5 < s[4] < 1


def test_dselect_k_selects_at_most_k_experts_once_codes_saturate():
    gates = Gates(input_dim=4, n_gates=1, n_experts=8, kind="dselect_k", k=2, gamma=1.0)
    with torch.no_grad():
        gates.linear.weight.zero_()
        # Selector 1 codes expert 5 = 101b, selector 2 expert 2 = 010b; α logits (0, log 3) → 1/4, 3/4.
        codes = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
        gates.linear.bias[0] = torch.cat([codes, torch.tensor([0.0, math.log(3.0)])])
    w = gates(torch.randn(7, 4))[:, 0]
    expected = torch.zeros(8)
    expected[5], expected[2] = 0.25, 0.75
    torch.testing.assert_close(w, expected.expand(7, 8))


def test_dselect_k_folds_codes_beyond_the_last_expert():
    gates = Gates(input_dim=2, n_gates=1, n_experts=5, kind="dselect_k", k=1)
    with torch.no_grad():
        gates.linear.weight.zero_()
        gates.linear.bias[0] = torch.tensor([1.0, 1.0, -1.0, 0.0])  # code 110b = 6 → expert 6 − 5 = 1
    w = gates(torch.zeros(3, 2))[:, 0]
    assert torch.equal(w, torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]).expand(3, 5))


# -- batched experts --------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_expert_bank_equals_a_loop_of_separate_mlps(activation):
    torch.manual_seed(0)
    bank = ExpertBank(4, input_dim=5, hidden=[7, 3], activation=activation)
    mlps = [MLP(5, [7, 3], activation) for _ in range(4)]
    with torch.no_grad():
        for e, mlp in enumerate(mlps):
            linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
            for layer, linear in zip(bank.layers, linears):
                linear.weight.copy_(layer.weight[e].T)
                linear.bias.copy_(layer.bias[e])
    x = torch.randn(9, 5)
    reference = torch.stack([mlp(x) for mlp in mlps], dim=1)
    torch.testing.assert_close(bank(x), reference, atol=1e-6, rtol=0)
    per_expert = torch.randn(9, 4, 5)  # each expert its own input (PLE from level 2, SNR)
    reference = torch.stack([mlp(per_expert[:, e]) for e, mlp in enumerate(mlps)], dim=1)
    torch.testing.assert_close(bank(per_expert), reference, atol=1e-6, rtol=0)


def test_batched_linear_is_one_parameter_per_layer_and_rejects_bad_shapes():
    layer = BatchedLinear(3, 4, 2)
    assert [p.shape for p in layer.parameters()] == [(3, 4, 2), (3, 2)]
    with pytest.raises(ValueError, match=r"\(B, 3, 4\)"):
        layer(torch.zeros(5, 2, 4))


def test_shared_input_linears_equal_separate_maps_in_values_and_gradients():
    torch.manual_seed(0)
    layers = [BatchedLinear(4, 6, 5), BatchedLinear(2, 6, 4, bias=False), BatchedLinear(1, 6, 3)]
    x = torch.randn(7, 6, requires_grad=True)
    wrt = [x, *(p for layer in layers for p in layer.parameters())]
    fused = shared_input_linears(x, layers)
    separate = [layer(x) for layer in layers]
    assert [tuple(y.shape) for y in fused] == [(7, 4, 5), (7, 2, 4), (7, 1, 3)]
    cotangents = [torch.randn_like(y) for y in separate]
    fused_grads = torch.autograd.grad(fused, wrt, cotangents)
    separate_grads = torch.autograd.grad(separate, wrt, cotangents)
    for a, b in zip([*fused, *fused_grads], [*separate, *separate_grads]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"one \(B, in\) input"):
        shared_input_linears(torch.zeros(2, 3, 6), layers)


def test_mmoe_one_gemm_forward_equals_experts_and_gates_apart_with_the_same_gradients():
    torch.manual_seed(0)
    bb = MMoE(6, TASKS, MMoE.Options(experts=3, expert_hidden=[5, 4]))
    x = torch.randn(9, 6)

    def loss_of(outputs):
        return sum((out * (i + 1)).sum() for i, out in enumerate(outputs.values()))

    fused = bb(x)
    loss_of(fused).backward()
    fused_grads = {n: p.grad.clone() for n, p in bb.named_parameters()}
    bb.zero_grad(set_to_none=True)
    mixed = torch.bmm(bb.gates(x), bb.experts(x))  # the two maps computed apart (Eq. 6-8 as written)
    apart = {name: mixed[:, t] for t, name in enumerate(TASKS)}
    loss_of(apart).backward()
    for name in TASKS:
        torch.testing.assert_close(fused[name], apart[name], atol=1e-6, rtol=0)
    for n, p in bb.named_parameters():
        torch.testing.assert_close(fused_grads[n], p.grad, atol=1e-5, rtol=0, msg=n)


# -- PLE wiring -------------------------------------------------------------------------------


def test_ple_gate_wiring_matches_the_paper():
    bb = PLE(6, TASKS, PLE.Options(levels=3, experts_per_task=2, shared_experts=1, expert_hidden=[4]))
    labels = bb.gate_experts()
    own = {t: [f"{t}/0", f"{t}/1"] for t in TASKS}
    everything = own["a"] + own["b"] + own["c"] + ["shared/0"]
    for level in (1, 2, 3):
        for t in TASKS:  # CGC, Eq. 4: task k's gate sees S^k = [E_k, E_s] only
            assert labels[f"level{level}/{t}"] == own[t] + ["shared/0"]
    # The shared module's gate covers every expert of its level, and only at non-final levels.
    assert labels["level1/shared"] == everything and labels["level2/shared"] == everything
    assert "level3/shared" not in labels
    assert list(CGC(6, TASKS, CGC.Options()).gate_experts()) == ["level1/a", "level1/b", "level1/c"]
    with pytest.raises(ValidationError):
        CGC.Options(levels=2)  # CGC is one level by definition


def reference_ple(bb: PLE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """PLE written out from Eq. 2–6 with Python loops over tasks and experts (softmax gates, 1-layer experts)."""
    per_task, shared = bb.options.experts_per_task, bb.options.shared_experts
    n_tasks = len(bb.task_names)
    inputs = {t: x for t in range(n_tasks)} | {"s": x}  # what each module reads
    for level in bb.levels:
        layer = level.experts.layers[0]

        def expert(e, inp, layer=layer):
            return torch.relu(inp @ layer.weight[e] + layer.bias[e])

        task_experts = {t: [expert(t * per_task + j, inputs[t]) for j in range(per_task)] for t in range(n_tasks)}
        shared_experts = [expert(n_tasks * per_task + j, inputs["s"]) for j in range(shared)]
        new = {}
        for t in range(n_tasks):
            gate = torch.softmax(inputs[t] @ level.task_gates.linear.weight[t], -1)
            seen = task_experts[t] + shared_experts
            new[t] = sum(gate[:, i : i + 1] * e for i, e in enumerate(seen))
        if level.shared_gate is not None:
            gate = torch.softmax(inputs["s"] @ level.shared_gate.linear.weight[0], -1)
            seen = [e for t in range(n_tasks) for e in task_experts[t]] + shared_experts
            new["s"] = sum(gate[:, i : i + 1] * e for i, e in enumerate(seen))
        inputs = new
    return {name: inputs[t] for t, name in enumerate(bb.task_names)}


@pytest.mark.parametrize("levels,per_task,shared", [(1, 2, 1), (2, 1, 2), (3, 2, 1), (2, 2, 0)])
def test_ple_equals_a_loop_implementation_of_the_equations(levels, per_task, shared):
    torch.manual_seed(levels)
    bb = PLE(6, TASKS, PLE.Options(levels=levels, experts_per_task=per_task, shared_experts=shared, expert_hidden=[5]))
    x = torch.randn(8, 6)
    expected = reference_ple(bb, x)
    out = bb(x)
    for t in TASKS:
        torch.testing.assert_close(out[t], expected[t], atol=1e-6, rtol=0)


def test_cgc_task_output_depends_only_on_its_own_and_shared_experts():
    bb = CGC(6, ["a", "b"], CGC.Options(experts_per_task=2, shared_experts=1, expert_hidden=[5]))
    bb(torch.randn(4, 6))["a"].sum().backward()
    grad = bb.levels[0].experts.layers[0].weight.grad.abs().sum((1, 2))  # per expert: a/0 a/1 b/0 b/1 shared/0
    assert (grad[[0, 1, 4]] > 0).all() and (grad[[2, 3]] == 0).all()


# -- gate dropout -----------------------------------------------------------------------------


def test_gate_dropout_only_while_training():
    torch.manual_seed(0)
    bb = YouTubeMMoE(6, TASKS, YouTubeMMoE.Options(bottom=[8], experts=4, expert_hidden=[5]))
    assert bb.options.gate_dropout == 0.1  # the paper's 10%
    x = torch.randn(256, 6)
    bb.eval()
    full = bb.gate_weights(x)
    again = bb.gate_weights(x)
    out1, out2 = bb(x), bb(x)
    for t in TASKS:
        assert torch.equal(full[t], again[t]) and torch.equal(out1[t], out2[t])
        assert (full[t] > 0).all()  # softmax: no zeros without dropout
    bb.train()
    dropped = bb.gate_weights(x)
    for t in TASKS:
        w = dropped[t]
        torch.testing.assert_close(w.sum(-1), torch.ones(256), atol=1e-6, rtol=0)
        zero = w == 0
        assert zero.any() and not zero.all(-1).any()
        # Kept weights are the eval weights renormalised: the same ratio within a row.
        ratio = torch.where(zero, torch.nan, w / full[t])
        assert torch.allclose(ratio.nan_to_num(0).amax(-1), torch.nan_to_num(ratio, 1e9).amin(-1), atol=1e-5)
    out = bb(x)
    assert not torch.equal(out["a"], out1["a"])


def test_gate_dropout_never_empties_a_gate():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(500, 3), -1)
    out = gate_dropout(w, 0.9)
    torch.testing.assert_close(out.sum(-1), torch.ones(500), atol=1e-6, rtol=0)
    kept_all = (out == w).all(-1)
    assert kept_all.any()  # rows where every weight was dropped fall back to the full gate


# -- SNR ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SNRTrans, SNRAver])
def test_snr_codes_are_exactly_binary_at_inference(cls):
    torch.manual_seed(0)
    bb = cls(6, TASKS, cls.Options(subnetworks=4, hidden=[8, 8]))
    with torch.no_grad():
        for route in bb.routes:
            route.codes.log_alpha.uniform_(-3, 3)
    bb.train()
    sampled = torch.cat([c.flatten() for c in bb.codes().values()])
    assert ((sampled > 0) & (sampled < 1)).any()  # relaxed while training
    bb.eval()
    codes = bb.codes()
    assert codes["route1"].shape == (4, 4) and codes["route2"].shape == (3, 4)
    for name, z in codes.items():
        assert set(z.unique().tolist()) <= {0.0, 1.0}, name
        expected = (bb.routes[int(name[-1]) - 1].codes.log_alpha > 0).float()  # ẑ > 1/2 ⇔ log α > 0
        assert torch.equal(z, expected)
    x = torch.randn(5, 6)
    assert all(torch.equal(u, v) for u, v in zip(bb(x).values(), bb(x).values()))


@pytest.mark.parametrize("cls", [SNRTrans, SNRAver])
def test_snr_closed_codes_cut_a_task_off(cls):
    bb = cls(6, ["a", "b"], cls.Options(subnetworks=3, hidden=[8])).eval()
    with torch.no_grad():
        bb.routes[-1].codes.log_alpha[0] = -5.0  # task a: no connection to any sub-network
    out = bb(torch.randn(4, 6))
    assert torch.equal(out["a"], torch.zeros(4, 8)) and out["b"].abs().sum() > 0


def test_snr_l0_penalty_is_the_expected_number_of_open_codes():
    bb = SNRAver(6, ["a", "b"], SNRAver.Options(subnetworks=3, hidden=[8, 8], l0_weight=0.5))
    log_alphas = [route.codes.log_alpha for route in bb.routes]
    shift = (2 / 3) * math.log(0.1 / 1.1)
    expected = 0.5 * sum(torch.sigmoid(a - shift).sum() for a in log_alphas)
    penalty = bb.regularization_loss()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    assert all((a.grad > 0).all() for a in log_alphas)  # lowering log α lowers the penalty
    assert 0 < penalty.item() <= 0.5 * (9 + 6)


# -- through build_model ------------------------------------------------------------------------------

SCHEMA_SPEC = SchemaSpec(categorical=[CategoricalFeature(name="g")], numeric=[NumericFeature(name=f"x{i}") for i in range(3)])
MODEL_TASKS = [Task(name="a", kind="binary"), Task(name="b", kind="regression")]


def tiny_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    g = rng.integers(0, 4, n)
    shared = x[:, 0] - 0.8 * x[:, 1] + np.array([-1.0, 0.0, 0.5, 1.0])[g]
    return pa.table({
        "g": g, "x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2],
        "a": (shared + 0.3 * rng.standard_normal(n) > 0).astype(int),
        "b": shared + 0.5 * x[:, 2] ** 2 + 0.1 * rng.standard_normal(n),
    })


@pytest.fixture(scope="module")
def tiny():
    train, valid = tiny_table(600, 0), tiny_table(300, 1)
    schema = SCHEMA_SPEC.fit(train)
    return schema, schema.encode(train, MODEL_TASKS), schema.encode(valid, MODEL_TASKS)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_builds_from_a_model_spec_and_handles_a_batch_of_one(config, tiny):
    schema, train, _ = tiny
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone=registry_name(config), options=CONFIGS[config], tower=[4]), schema, MODEL_TASKS)
    assert isinstance(model, MultiTaskModel)
    one = train.take(slice(0, 1)).inputs
    model.train()
    out = model(one)
    assert out["a"].shape == (1,) and out["b"].shape == (1,)
    (out["a"] + out["b"]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.eval()
    assert model(one)["b"].shape == (1,)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_learns_better_than_a_constant_predictor(config, tiny):
    schema, train, valid = tiny
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone=registry_name(config), options=CONFIGS[config], embedding_dim=3), schema, MODEL_TASKS)
    trainer = Trainer(model, MODEL_TASKS, build_balancer(BalancerSpec(), MODEL_TASKS),
                      TrainSpec(epochs=12, batch_size=50, lr=1e-2, progress=False, patience=None))
    trainer.fit(train.batches(50, shuffle=True), valid)
    result = evaluate(model, MODEL_TASKS, valid)
    # A constant predictor has AUC 0.5 and RMSE equal to the target's standard deviation.
    assert result["a"]["auc"] > 0.9, result["a"]
    assert result["b"]["rmse"] < 0.4 * valid.targets["b"].std(unbiased=False).item(), result["b"]


def test_bad_options_are_rejected_with_their_name():
    with pytest.raises(ValueError, match="gate"):
        ModelSpec(backbone="mmoe", options={"gate": "top_k"})
    with pytest.raises(ValueError, match="levels"):
        ModelSpec(backbone="cgc", options={"levels": 2})
    with pytest.raises(ValueError, match="experts"):
        ModelSpec(backbone="omoe", options={"experts": 0})
