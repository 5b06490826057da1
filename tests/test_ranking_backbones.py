"""The 2022–2024 ranking backbones (AdaTT, HoME, PEPNet/PPNet, DBMTL, STEM, STAR, MetaHeac): structure against
the papers, batch of one, gates, ONNX export, the embedding-table registry, BatchNorm options, bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.diagnostics.gates import gate_statistics
from mtlkit.errors import ConfigError
from mtlkit.export import ServingModule, _export_onnx, _max_violation, _Runner, example_inputs, input_specs
from mtlkit.models import BACKBONES, ModelSpec, MultiTaskModel, build_model
from mtlkit.models.adatt import AdaTT
from mtlkit.models.dbmtl import DBMTL
from mtlkit.models.home import HoME
from mtlkit.models.layout import InputLayout
from mtlkit.models.pepnet import PEPNet
from mtlkit.models.stem import STEM
from mtlkit.nn import sparse_weights
from mtlkit.nn.mlp import BatchNorm
from mtlkit.tasks import Task

TASKS3 = ["a", "b", "c"]
SPEC = SchemaSpec(categorical=[CategoricalFeature(name=n) for n in ("user", "item", "country")],
                  numeric=[NumericFeature(name="x0"), NumericFeature(name="x1")])
MODEL_TASKS = [Task(name="click", kind="binary"), Task(name="buy", kind="binary"), Task(name="watch", kind="regression")]

# Every new backbone, small; several exercise non-default options. (name, registry name, spec keywords)
CONFIGS = {
    "adatt": ("adatt", {"options": {"levels": 2, "experts_per_task": 2, "expert_hidden": [8]}}),
    "adatt_shared": ("adatt", {"options": {"levels": 2, "experts_per_task": 1, "shared_experts": 2, "expert_hidden": [8]}}),
    "home": ("home", {"options": {"task_groups": [["click", "buy"], ["watch"]], "expert_hidden": [8], "feature_gate_rank": 2}}),
    "home_plain": ("home", {"options": {"expert_hidden": [8], "expert_norm": False, "hierarchy_mask": False,
                                        "feature_gates": False, "self_gates": False}}),
    "pepnet": ("pepnet", {"options": {"hidden": [8, 4], "domain_features": ["country"], "prior_features": ["user", "item"],
                                      "gate_hidden": 8}}),
    "ppnet": ("ppnet", {"options": {"hidden": [8], "prior_features": ["user"], "gate_hidden": 8}}),
    "dbmtl": ("dbmtl", {"options": {"bottom": [16], "tower": [8], "relation": [4]}}),
    "stem": ("stem", {"options": {"levels": 2, "experts_per_task": 1, "shared_experts": 1, "expert_hidden": [8]}}),
    "star": ("star", {"options": {"hidden": [8, 4], "auxiliary": [4]}, "scenario": "country"}),
    "metaheac": ("metaheac", {"options": {"experts": 3, "expert_hidden": [8], "critics": 2, "critic_hidden": [4], "gate_hidden": 4},
                              "scenario": "country"}),
    "mmoe_batch_norm": ("mmoe", {"options": {"experts": 3, "expert_hidden": [8], "batch_norm": True}, "tower": [4],
                                 "tower_batch_norm": True}),
}
NEW = {"adatt", "home", "pepnet", "ppnet", "dbmtl", "stem", "star", "metaheac"}


def table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    user, item, country = rng.integers(0, 12, n), rng.integers(0, 9, n), rng.integers(0, 4, n)
    x = rng.standard_normal((n, 2))
    score = x[:, 0] - 0.7 * x[:, 1] + np.linspace(-1, 1, 12)[user] + np.array([-0.5, 0.0, 0.5, 1.0])[country]
    click = (score + 0.3 * rng.standard_normal(n) > 0).astype(int)
    return pa.table({"user": [f"u{u}" for u in user], "item": item, "country": [f"c{c}" for c in country],
                     "x0": x[:, 0], "x1": x[:, 1], "click": click, "buy": (score > 0.8).astype(int),
                     "watch": score + 0.1 * rng.standard_normal(n)})


@pytest.fixture(scope="module")
def data():
    schema = SPEC.fit(table(400, 0))
    return schema, schema.encode(table(64, 1), MODEL_TASKS)


def build(config: str, schema, **extra) -> MultiTaskModel:
    name, kwargs = CONFIGS[config]
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone=name, embedding_dim=3, **kwargs, **extra), schema, MODEL_TASKS)
    assert isinstance(model, MultiTaskModel)
    return model


def test_every_new_backbone_is_configured_here():
    assert NEW <= set(BACKBONES.names()) and NEW == {name for name, _ in CONFIGS.values()} - {"mmoe"}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_batch_of_one_trains_and_predicts(config, data):
    schema, encoded = data
    model = build(config, schema).train()
    one = encoded.take(slice(0, 1)).inputs
    out = model(one)
    assert all(out[t.name].shape == (1,) for t in MODEL_TASKS)
    sum(out.values()).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.eval()
    many = model(encoded.inputs)
    assert many["watch"].shape == (64,) and torch.isfinite(many["watch"]).all()


@pytest.mark.parametrize("config", ["adatt", "adatt_shared", "home", "home_plain", "stem", "metaheac"])
def test_gates_are_distributions_labelled_by_their_experts(config, data):
    schema, encoded = data
    model = build(config, schema)
    weights, labels = model.gate_weights(encoded.inputs), model.gate_experts()
    assert weights and set(weights) == set(labels)
    for gate, w in weights.items():
        assert w.shape == (64, len(labels[gate])), gate
        assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(64), atol=1e-5), gate
    stats = gate_statistics(model, encoded)
    assert set(stats) == set(labels) and all(0.0 <= s.collapsed_share <= 1.0 for s in stats.values())


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_onnx_export_equals_pytorch(config, data, tmp_path):
    schema, _ = data
    model = build(config, schema).eval()
    specs = input_specs(schema)
    module = ServingModule(model, MODEL_TASKS, [s["key"] for s in specs]).eval()
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        _export_onnx(module, example_inputs(schema, specs, rows=8), path, [s["name"] for s in specs], [t.name for t in MODEL_TASKS], None)
        for rows in (67, 1):
            check = example_inputs(schema, specs, rows=rows, seed=1)
            reference = [t.numpy() for t in module(*check)]
            got = _Runner(path, "onnx", [s["name"] for s in specs])({s["name"]: t.numpy() for s, t in zip(specs, check)})
            assert _max_violation(got, reference)[1] <= 1.0, config


# -- AdaTT ------------------------------------------------------------------------------------


def test_adatt_task_gates_see_every_expert_and_the_shared_module_only_below_the_top():
    bb = AdaTT(6, TASKS3, AdaTT.Options(levels=2, experts_per_task=2, shared_experts=1, expert_hidden=[4]))
    labels = bb.gate_experts()
    everything = [f"{t}/{i}" for t in TASKS3 for i in range(2)] + ["shared/0"]
    assert all(labels[f"level{j}/{t}"] == everything for j in (1, 2) for t in TASKS3)
    assert "level1/shared" in labels and "level2/shared" not in labels


@pytest.mark.parametrize("residual", [True, False])
def test_adatt_fusion_is_all_expert_gate_plus_native_residual(residual):
    """One level, one expert per task: f^t = Σ_i g^t_i E_i + E_t (Eq. 3–5); without residual, the gate alone."""
    torch.manual_seed(0)
    bb = AdaTT(6, TASKS3, AdaTT.Options(levels=1, experts_per_task=1, expert_hidden=[5], self_residual=residual))
    x = torch.randn(7, 6)
    level = bb.levels[0]
    experts, gates = level.experts(x), level.gates(x)
    out = bb(x)
    for t, name in enumerate(TASKS3):
        expected = (gates[:, t, :, None] * experts).sum(1) + (experts[:, t] if residual else 0)
        torch.testing.assert_close(out[name], expected)


def test_adatt_learned_native_weights_with_several_experts_per_task():
    bb = AdaTT(6, TASKS3, AdaTT.Options(levels=1, experts_per_task=2, expert_hidden=[5]))
    level = bb.levels[0]
    assert level.residual_weights is not None
    bb(torch.randn(4, 6))["a"].sum().backward()
    grad = level.residual_weights.grad
    assert grad[0, :2].abs().sum() > 0 and grad[0, 2:].abs().sum() == 0  # task a's v_a touches only a's experts


# -- HoME -------------------------------------------------------------------------------------


def test_home_hierarchy_mask_limits_each_gate_to_its_own_category_and_the_global_experts():
    groups = [["a", "b"], ["c"]]
    on = HoME(6, TASKS3, HoME.Options(task_groups=groups, expert_hidden=[4]))
    labels = on.gate_experts()
    assert labels["meta/group0"] == ["group0/0", "shared/0"] and labels["meta/group1"] == ["group1/0", "shared/0"]
    assert labels["meta/shared"] == ["group0/0", "group1/0", "shared/0"]
    assert labels["task/a"] == ["task/a/0", "group0/0", "shared/0"] and labels["task/c"] == ["task/c/0", "group1/0", "shared/0"]
    off = HoME(6, TASKS3, HoME.Options(task_groups=groups, expert_hidden=[4], hierarchy_mask=False)).gate_experts()
    assert len(off["task/a"]) == 3 + 2 + 1 and len(off["meta/group0"]) == 3


@pytest.mark.parametrize("mask", [True, False])
def test_home_task_output_reads_only_its_category_under_the_mask(mask):
    torch.manual_seed(0)
    bb = HoME(6, TASKS3, HoME.Options(task_groups=[["a", "b"], ["c"]], expert_hidden=[4], hierarchy_mask=mask, self_gates=False))
    bb(torch.randn(8, 6))["a"].sum().backward()
    per_expert = bb.task_level.experts.layers[0].weight.grad.abs().sum((1, 2))  # task a, b, c, group0, group1, shared
    other = per_expert[[1, 2, 4]]  # task b's and c's experts and category 1's
    assert (other == 0).all() if mask else (other > 0).all()
    assert (per_expert[[0, 3, 5]] > 0).all()


def test_home_switches_change_the_structure_each_on_its_own():
    base = {"expert_hidden": [4], "task_groups": [["a", "b"], ["c"]]}
    full = HoME(6, TASKS3, HoME.Options(**base))
    assert full.meta.feature_gates is not None and full.meta.self_gates is not None
    assert full.meta.experts.norms is not None and isinstance(full.meta.experts.activation, torch.nn.SiLU)
    plain = HoME(6, TASKS3, HoME.Options(**base, expert_norm=False))
    assert plain.meta.experts.norms is None and isinstance(plain.meta.experts.activation, torch.nn.ReLU)
    assert HoME(6, TASKS3, HoME.Options(**base, feature_gates=False)).meta.feature_gates is None
    assert HoME(6, TASKS3, HoME.Options(**base, self_gates=False)).task_level.self_gates is None


def test_home_feature_gates_start_neutral_and_privatise_each_experts_input():
    torch.manual_seed(0)
    bb = HoME(6, TASKS3, HoME.Options(expert_hidden=[4], feature_gate_rank=2))
    gates = bb.meta.feature_gates
    x = torch.randn(5, 6)
    torch.testing.assert_close(gates(x), x.unsqueeze(1).expand(-1, gates.n, -1))  # 2σ(0) = 1
    torch.nn.init.normal_(gates.up.weight)
    private = gates(x)
    assert not torch.allclose(private[:, 0], private[:, 1])  # each expert its own view of x
    assert ((private / x.unsqueeze(1)) < 2).all() and ((private / x.unsqueeze(1)) > 0).all()


def test_home_self_gate_adds_a_sigmoid_residual_of_the_units_own_experts():
    torch.manual_seed(0)
    bb = HoME(6, TASKS3, HoME.Options(expert_hidden=[4], feature_gates=False, expert_norm=False))
    level = bb.task_level
    h = torch.randn(5, 2, 4)  # the meta outputs: one category and the global one
    fused, per_gate = level(h)
    experts = level.experts(h[:, level.sources])
    gate_in = h[:, level.gate_sources]
    for g in range(3):
        mixed = torch.zeros(5, 4)
        for i, e in enumerate(level.seen[g].tolist()):
            mixed = mixed + per_gate[g][:, i : i + 1] * experts[:, e]
        residual = (torch.sigmoid(level.self_gates(gate_in))[:, g] * level.native[g])[:, :, None] * experts
        torch.testing.assert_close(fused[:, g], mixed + residual.sum(1))


@pytest.mark.parametrize("fixes", [True, False])
def test_home_reads_a_shared_input_once_with_the_result_of_one_copy_per_expert(fixes):
    """The meta level's experts and gates all read x: taken as (B, width) once, not copied per expert."""
    torch.manual_seed(0)
    switches = {} if fixes else {"expert_norm": False, "hierarchy_mask": False, "feature_gates": False, "self_gates": False}
    bb = HoME(6, ["a", "b", "c"], HoME.Options(task_groups=[["a", "b"], ["c"]], expert_hidden=[5], shared_experts=2, **switches))
    with torch.no_grad():
        for p in bb.parameters():
            p.normal_(0, 0.3)  # feature gates start at exactly 1: move them so they matter
    assert bb.meta._one_expert_source == 0 and bb.task_level._one_expert_source is None
    x = torch.randn(4, 6, requires_grad=True)
    shared = torch.cat(list(bb(x).values()), 1)
    (g_shared,) = torch.autograd.grad(shared.square().sum(), x)
    bb.meta._one_expert_source = bb.meta._one_gate_source = None  # one copy of x per expert and per gate
    copied = torch.cat(list(bb(x).values()), 1)
    (g_copied,) = torch.autograd.grad(copied.square().sum(), x)
    torch.testing.assert_close(shared, copied)
    torch.testing.assert_close(g_shared, g_copied)


def test_home_bad_task_groups_are_a_config_error():
    with pytest.raises(ConfigError, match="model.options.task_groups"):
        HoME(6, TASKS3, HoME.Options(task_groups=[["a"], ["b", "z"]]))


# -- PEPNet -----------------------------------------------------------------------------------


LAYOUT = InputLayout(["user", "item", "country"], [5, 7, 3], embedding_dim=2, numeric_dim=2)


def pepnet(**options) -> PEPNet:
    torch.manual_seed(0)
    opts = {"hidden": [6, 4], "domain_features": ["country"], "prior_features": ["user", "item"], "gate_hidden": 5, **options}
    return PEPNet.create(LAYOUT.input_dim, TASKS3, PEPNet.Options(**opts), LAYOUT)


def input_gradient(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(value.sum(), x)
    return grad.abs().sum(0)


def test_epnet_scale_is_personalised_by_the_domain_features_only():
    bb = pepnet()
    x = torch.randn(4, LAYOUT.input_dim, requires_grad=True)
    scale = bb.domain_scale(x)
    assert scale.shape == (4, LAYOUT.input_dim) and ((scale > 0) & (scale < 2)).all()  # γ = 2
    grad = input_gradient(scale, x)  # ⊘(E): the general input is seen, but gets no gradient through the gate
    domain = LAYOUT.field_columns("country")
    assert (grad[domain] > 0).all() and grad.sum() == grad[domain].sum()


def test_ppnet_scales_each_tower_layer_per_task_from_the_prior_features_only():
    bb = pepnet()
    x = torch.randn(4, LAYOUT.input_dim, requires_grad=True)
    scales = bb.layer_scales(x)
    assert [s.shape for s in scales] == [(4, 3, LAYOUT.input_dim), (4, 3, 6)]
    grad = input_gradient(sum(s.sum() for s in scales), x)
    prior = list(range(0, 4))  # user and item embeddings
    assert (grad[prior] > 0).all() and grad.sum() == grad[prior].sum()
    assert not torch.allclose(scales[1][:, 0], scales[1][:, 1])  # each task its own gate


def test_pepnet_equals_its_equations():
    bb = pepnet()
    x = torch.randn(3, LAYOUT.input_dim)
    o_ep = bb.domain_scale(x) * x
    scales = bb.layer_scales(x)
    h = o_ep.unsqueeze(1).expand(-1, 3, -1)
    for layer, scale in zip(bb.layers, scales):
        h = torch.relu(torch.einsum("bti,tio->bto", h * scale, layer.weight) + layer.bias)
    out = bb(x)
    for t, name in enumerate(TASKS3):
        torch.testing.assert_close(out[name], h[:, t])


def test_pepnet_switches_and_unknown_features():
    assert pepnet(ppnet=False).layer_scales(torch.zeros(1, LAYOUT.input_dim)) == []
    x = torch.randn(2, LAYOUT.input_dim)
    assert torch.equal(pepnet(epnet=False).domain_scale(x), torch.ones_like(x))
    with pytest.raises(ConfigError, match=r"model.options.prior_features: 'age' is not a categorical feature"):
        pepnet(prior_features=["age"])


# -- DBMTL ------------------------------------------------------------------------------------


def test_dbmtl_default_is_the_full_bayesian_chain_and_gradients_flow_child_to_parent():
    torch.manual_seed(0)
    bb = DBMTL(6, TASKS3, DBMTL.Options(bottom=[8], tower=[5], relation=[3]))
    assert bb.parents == {"a": [], "b": ["a"], "c": ["a", "b"]}
    out = bb(torch.randn(4, 6))
    out["c"].sum().backward(retain_graph=True)
    tower_grad = bb.towers.layers[0].weight.grad.abs().sum((1, 2))
    assert (tower_grad > 0).all()  # c's likelihood conditions on a and b: their towers learn from it
    bb.zero_grad()
    out["a"].sum().backward()
    assert bb.relations["c"][0].weight.grad is None or bb.relations["c"][0].weight.grad.abs().sum() == 0
    assert bb.towers.layers[0].weight.grad.abs().sum((1, 2))[1:].sum() == 0


def test_dbmtl_dependencies_are_checked():
    explicit = DBMTL(6, TASKS3, DBMTL.Options(depends_on={"c": ["a"]}))
    assert explicit.parents == {"a": [], "b": [], "c": ["a"]}
    with pytest.raises(ConfigError, match="model.options.depends_on: unknown task 'z'"):
        DBMTL(6, TASKS3, DBMTL.Options(depends_on={"c": ["z"]}))
    with pytest.raises(ConfigError, match="cycle"):
        DBMTL(6, TASKS3, DBMTL.Options(depends_on={"a": ["b"], "b": ["a"]}))


# -- STEM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("table_name", ["fused", "per_field"])
def test_stem_task_loss_trains_only_its_own_and_the_shared_embeddings_and_experts(table_name, data):
    schema, encoded = data
    torch.manual_seed(0)  # one level: from level 2 on, the shared input has mixed every expert (the authors' code too)
    model = build_model(ModelSpec(backbone="stem", options={"expert_hidden": [8]}, embedding_dim=3, embedding_table=table_name),
                        schema, MODEL_TASKS)
    assert model.encoder.output_dim == 4 * 3 * 3 + 2  # 1 shared + 3 task copies of 3 fields × 3 dims, 2 numerics
    model(encoded.inputs)["click"].sum().backward()
    level = model.backbone.levels[0]
    per_expert = level.experts.layers[0].weight.grad.abs().sum((1, 2))  # click, buy, watch, shared
    assert per_expert[0] > 0 and per_expert[3] > 0 and per_expert[1] == 0 and per_expert[2] == 0
    rows = model.encoder.embedding.field_rows()  # copy c of field f is table field c·3 + f
    grads = [(w.grad[a:b] if table_name == "fused" else w.grad).abs().sum() for w, a, b in rows]
    shared, click, buy = grads[0:3], grads[3:6], grads[6:9]
    assert all(g > 0 for g in shared + click) and all(g == 0 for g in buy)


def test_stem_forward_mixes_every_experts_output():
    torch.manual_seed(0)
    layout = InputLayout(["u"], [4], embedding_dim=2, numeric_dim=1, copies=3)
    bb = STEM.create(layout.input_dim, ["a", "b"], STEM.Options(expert_hidden=[3]), layout)
    x = torch.randn(5, layout.input_dim)
    level = bb.levels[0]
    h = x[:, bb.input_columns]
    experts = level.experts(h[:, [0, 1, 2]])  # expert a reads input a, expert b input b, the shared one the shared input
    weights = level.gates(h[:, :2] + h[:, 2:3])
    torch.testing.assert_close(bb(x)["b"], (weights[:, 1, :, None] * experts).sum(1))  # all forward
    assert h[:, 1, :2].equal(x[:, 4:6]) and h[:, 2, :2].equal(x[:, 0:2])  # b reads copy 2, shared copy 0


@pytest.mark.parametrize(("m", "s", "group"), [(1, 1, [0, 1, 2]), (2, 1, [0, 0, 1, 1, 2]), (2, 3, [0, 0, 1, 1, 2, 2, 2]), (1, 2, [0, 1, 2, 2])])
def test_stem_experts_read_their_owners_inputs(m, s, group):
    layout = InputLayout(["u"], [4], embedding_dim=2, numeric_dim=1, copies=3)
    bb = STEM.create(layout.input_dim, ["a", "b"], STEM.Options(expert_hidden=[3], experts_per_task=m, shared_experts=s), layout)
    h = torch.randn(4, 3, 7, requires_grad=True)  # (batch, task a / task b / shared input, width)
    got = bb.levels[0]._expert_inputs(h)
    assert torch.equal(got, h[:, group])
    got.sum().backward()  # every input's gradient counts each expert that reads it
    assert h.grad[0, :, 0].tolist() == [float(group.count(i)) for i in range(3)]


def test_stem_works_with_sparse_table_gradients(data):
    schema, encoded = data
    model = build("stem", schema)
    model.encoder.embedding.set_sparse_gradients(True)
    model(encoded.inputs)["buy"].sum().backward()
    (weight,) = sparse_weights(model)
    assert weight.grad.is_sparse and weight.grad.coalesce().values().abs().sum() > 0


# -- STAR and scenarios -----------------------------------------------------------------------


def test_star_unseen_scenario_uses_the_shared_weights_only(data):
    schema, encoded = data
    model = build("star", schema).eval()
    star = model.backbone
    inputs = dict(encoded.inputs)
    unseen = inputs["categorical"].clone()
    unseen[:, star.scenario_field] = 0
    before_unseen, before_seen = model({**inputs, "categorical": unseen}), model(inputs)
    with torch.no_grad():  # any scenario-specific parameter: unseen rows must not notice
        for layer in star.layers:
            layer.weight_p.normal_()
            layer.bias_p.normal_()
        star.norm.gamma_p.normal_()
        star.norm.beta_p.normal_()
        star.norm.running_mean[1:].normal_()
    after_unseen, after_seen = model({**inputs, "categorical": unseen}), model(inputs)
    torch.testing.assert_close(after_unseen["click"], before_unseen["click"])
    assert not torch.allclose(after_seen["click"], before_seen["click"])


def test_star_layer_is_shared_times_scenario_weight():
    from mtlkit.models.star import StarLinear

    torch.manual_seed(0)
    layer = StarLinear(3, 4, 2)
    with torch.no_grad():
        layer.weight_p.normal_()
    x, scenario = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    weight = torch.cat([torch.ones(1, 4, 2), layer.weight_p]) * layer.shared.weight.t()
    bias = layer.shared.bias + torch.cat([torch.zeros(1, 2), layer.bias_p])
    expected = torch.stack([x[i] @ weight[p] + bias[p] for i, p in enumerate(scenario.tolist())])
    torch.testing.assert_close(layer(x, scenario), expected)


def test_partitioned_norm_uses_each_scenarios_statistics():
    from mtlkit.models.star import PartitionedNorm

    norm = PartitionedNorm(3, 2, momentum=1.0)
    z = torch.tensor([[0.0, 1.0], [2.0, 3.0], [10.0, 10.0], [20.0, 30.0]])
    scenario = torch.tensor([1, 1, 2, 2])
    out = norm.train()(z, scenario)
    torch.testing.assert_close(out, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 1.0]]), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.running_mean[1], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(norm.running_mean[0], z.mean(0))  # slot 0: all rows
    evaluated = norm.eval()(torch.tensor([[1.0, 2.0], [1.0, 2.0]]), torch.tensor([1, 0]))
    assert evaluated[0].abs().max() < 1e-6 and evaluated[1].abs().max() > 0.1


def test_scenario_config_errors_name_the_key(data):
    schema, _ = data
    with pytest.raises(ConfigError, match="model.scenario: backbone star needs a scenario column"):
        build_model(ModelSpec(backbone="star"), schema, MODEL_TASKS)
    with pytest.raises(ConfigError, match=r"model.scenario: 'device' is not a categorical feature"):
        build_model(ModelSpec(backbone="mmoe", scenario="device"), schema, MODEL_TASKS)
    with pytest.raises(ValueError, match="partitioned_norm"):
        ModelSpec(backbone="star", options={"partitioned_norm": "sometimes"})
    with pytest.raises(ValueError, match="feature_gate"):
        ModelSpec(backbone="home", options={"feature_gate": True})


# -- BatchNorm options ------------------------------------------------------------------------


def test_batch_norm_in_experts_and_towers(data):
    schema, encoded = data
    model = build("mmoe_batch_norm", schema)
    assert model.backbone.experts.norms is not None and len(model.backbone.experts.norms) == 1
    assert any(isinstance(m, BatchNorm) for m in model.heads["click"].tower.modules())
    model.train()(encoded.inputs)
    assert model.backbone.experts.norms[0].num_batches_tracked == 1
    plain = build_model(ModelSpec(backbone="mmoe"), schema, MODEL_TASKS)
    assert plain.backbone.experts.norms is None and not any(isinstance(m, BatchNorm) for m in plain.modules())


# -- end to end: a scenario column through train, evaluate and the CLI -------------------------


def scenario_config(**model) -> dict:
    return {
        "seed": 0,
        "features": {"categorical": ["user", "item", "country"], "numeric": ["x0", "x1"]},
        "tasks": [{"name": "click", "kind": "binary"}, {"name": "watch", "kind": "regression"}],
        "model": {"backbone": "star", "options": {"hidden": [8]}, "embedding_dim": 3, "scenario": "country", **model},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "progress": False},
    }


def test_evaluate_reports_metrics_per_scenario_and_unseen_values(tmp_path):
    from typer.testing import CliRunner

    from mtlkit.cli import app
    from mtlkit.config import RunConfig
    from mtlkit.run import evaluate_run, train_run

    train, valid = table(600, 0), table(300, 1)
    train_run(RunConfig.model_validate(scenario_config()), tmp_path / "run", tables={"train": train, "validation": valid})
    test = table(300, 2)
    country = np.array(test.column("country").to_pylist(), dtype=object)
    country[:50] = "never-seen"
    test = test.set_column(test.schema.get_field_index("country"), "country", pa.array(country.tolist()))
    evaluation = evaluate_run(tmp_path / "run", test)
    by = evaluation.scenarios["data"]
    assert set(by) == {"(unseen)", "c0", "c1", "c2", "c3"}
    assert by["(unseen)"]["click"]["rows"] == 50 and sum(s["click"]["rows"] for s in by.values()) == 300
    assert all(0.0 <= s["click"]["auc"] <= 1.0 for name, s in by.items() if name != "(unseen)")
    path = tmp_path / "test.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(test, path)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--data", str(path), "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "per scenario" in result.output and "(unseen)" in result.output
    import json

    assert set(json.loads((tmp_path / "m.json").read_text())["scenarios"][str(path)]) == set(by)


@pytest.mark.parametrize("model,message", [
    ({"scenario": "device"}, r"model.scenario: 'device' is not a categorical feature"),
    ({"scenario": None}, r"model.scenario: backbone star needs a scenario column"),
    ({"options": {"hidden": [8], "aux": [4]}}, r"aux"),
])
def test_bad_scenario_configs_fail_before_the_run_directory_is_written(tmp_path, model, message):
    from mtlkit.config import RunConfig
    from mtlkit.run import train_run

    with pytest.raises((ConfigError, ValueError), match=message):
        config = RunConfig.model_validate(scenario_config(**model))
        train_run(config, tmp_path / "run", tables={"train": table(200, 0), "validation": table(100, 1)})
    assert not (tmp_path / "run").exists()
