"""MetaHeac (Zhu et al., KDD 2021) as a multi-scenario backbone: structure against the paper (which
experts and critics each gate mixes, what is scenario-specific), unseen scenarios, learning on a
synthetic multi-scenario set, and config errors before anything is written. Batch of one, gates
and ONNX export run with the other new backbones in test_ranking_backbones.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models.layout import InputLayout
from mtlkit.models.metaheac import MetaHeac

TASKS = ["ctr", "cvr", "watch"]
LAYOUT = InputLayout(["user", "country", "item"], [6, 4, 9], embedding_dim=3, numeric_dim=2, scenario="country")


def backbone(**options) -> MetaHeac:
    torch.manual_seed(0)
    opts = {"experts": 3, "expert_hidden": [5], "critics": 2, "critic_hidden": [4], "gate_hidden": 6, **options}
    return MetaHeac.create(LAYOUT.input_dim, TASKS, MetaHeac.Options(**opts), LAYOUT).eval()


def test_each_task_mixes_all_experts_then_all_critics_with_its_scenario_gates():
    """``r_t = Σ_c b_c D_c(Σ_k a_k E_k(x))``, with ``a`` and ``b`` the gates of the row's scenario and task t."""
    bb = backbone()
    x, scenario = torch.randn(7, LAYOUT.input_dim), torch.tensor([0, 1, 2, 3, 1, 2, 3])
    a, b = bb.mixtures(x, scenario)
    assert a.shape == (7, 3, 3) and b.shape == (7, 3, 2)
    torch.testing.assert_close(a.sum(-1), torch.ones(7, 3))
    torch.testing.assert_close(b.sum(-1), torch.ones(7, 3))
    experts = bb.experts(x)  # (B, K, d)
    out = bb(x, scenario)
    for t, name in enumerate(TASKS):
        h = (a[:, t, :, None] * experts).sum(1)
        critics = bb.critics(h)  # (B, C, dc)
        torch.testing.assert_close(out[name], (b[:, t, :, None] * critics).sum(1))
    labels = bb.gate_experts()
    assert labels["experts/ctr"] == ["expert0", "expert1", "expert2"] and labels["critics/watch"] == ["critic0", "critic1"]
    weights = bb.gate_weights(x, scenario)
    assert set(weights) == set(labels) and weights["experts/cvr"].shape == (7, 3) and weights["critics/cvr"].shape == (7, 2)


def test_gates_depend_on_scenario_task_and_the_rows_other_fields_only():
    bb = backbone()
    x = torch.randn(1, LAYOUT.input_dim).expand(4, -1).clone()
    a, _ = bb.mixtures(x, torch.tensor([0, 1, 2, 3]))
    assert all(not torch.allclose(a[i, 0], a[j, 0]) for i in range(4) for j in range(i + 1, 4))  # scenario-specific
    assert not torch.allclose(a[1, 0], a[1, 1])  # task-specific (the task embedding)
    scenario = torch.tensor([1, 2])
    base = bb.mixtures(x[:2], scenario)[0]
    moved = x[:2].clone()
    moved[:, LAYOUT.field_columns("country")] += 5.0  # the scenario field's own embedding: not in the mean
    moved[:, LAYOUT.other_columns()] += 5.0  # numeric columns: experts read them, gates do not
    torch.testing.assert_close(bb.mixtures(moved, scenario)[0], base)
    moved[:, LAYOUT.field_columns("item")] += 1.0  # another field: the mean field embedding moves
    assert not torch.allclose(bb.mixtures(moved, scenario)[0], base)


def test_only_the_scenario_embedding_is_scenario_specific():
    """Experts, critics and both gates are shared; seven seen countries add one 7-row embedding, nothing else."""
    layout = InputLayout(["user", "country"], [6, 8], embedding_dim=3, numeric_dim=2, scenario="country")
    options = MetaHeac.Options(experts=3, expert_hidden=[5], critics=2, critic_hidden=[4], gate_hidden=6)
    bb = MetaHeac.create(layout.input_dim, TASKS, options, layout)
    per_scenario = {name: p.shape for name, p in bb.named_parameters() if 7 in p.shape}
    assert per_scenario == {"scenario_embedding": torch.Size([7, 8])}  # seen ids 1..7; id 0 is a fixed zero row
    fewer = MetaHeac.create(layout.input_dim, TASKS, options, InputLayout(["user", "country"], [6, 3], 3, 2, scenario="country"))
    assert sum(p.numel() for p in bb.parameters()) - sum(p.numel() for p in fewer.parameters()) == 5 * 8


def test_unseen_scenario_uses_shared_parameters_only():
    bb = backbone()
    x = torch.randn(6, LAYOUT.input_dim)
    unseen, seen = torch.zeros(6, dtype=torch.long), torch.tensor([1, 2, 3, 1, 2, 3])
    before_unseen, before_seen = bb(x, unseen)["ctr"], bb(x, seen)["ctr"]
    torch.testing.assert_close(bb(x)["ctr"], before_unseen)  # no scenario given: all unseen
    with torch.no_grad():
        bb.scenario_embedding.normal_()
    torch.testing.assert_close(bb(x, unseen)["ctr"], before_unseen)
    assert not torch.allclose(bb(x, seen)["ctr"], before_seen)
    torch.testing.assert_close(bb.scenario_vectors(unseen), torch.zeros(6, 8))


def test_gradients_reach_experts_critics_gates_and_embeddings_batch_of_one():
    bb = backbone().train()
    out = bb(torch.randn(1, LAYOUT.input_dim), torch.tensor([2]))
    sum(v.sum() for v in out.values()).backward()
    grads = {name: p.grad for name, p in bb.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["scenario_embedding"][1].abs().sum() > 0 and grads["scenario_embedding"][0].abs().sum() == 0  # only id 2's row
    assert bb.last_shared_features is not None and bb.last_shared_features.shape == (1, 3, 5)


def test_options_are_validated():
    with pytest.raises(ValueError, match="critic"):
        MetaHeac.Options(critic=3)
    with pytest.raises(ValueError, match="experts"):
        MetaHeac.Options(experts=0)


# -- end to end: a synthetic multi-scenario set through train_run and evaluate ---------------


def multi_scenario_table(n: int, seed: int) -> pa.Table:
    """Four countries; the click depends on x0 with a sign and on x1 with a weight that differ by country."""
    rng = np.random.default_rng(seed)
    country, user = rng.integers(0, 4, n), rng.integers(0, 20, n)
    x = rng.standard_normal((n, 2))
    sign, weight = np.array([1.0, -1.0, 1.0, -1.0]), np.array([0.0, 1.0, -1.0, 2.0])
    score = 2.0 * sign[country] * x[:, 0] + weight[country] * x[:, 1] + np.linspace(-0.5, 0.5, 20)[user]
    click = (score + 0.5 * rng.standard_normal(n) > 0).astype(int)
    return pa.table({"user": [f"u{u}" for u in user], "country": [f"c{c}" for c in country], "x0": x[:, 0], "x1": x[:, 1],
                     "click": click, "watch": score + 0.3 * rng.standard_normal(n)})


def config(**model) -> dict:
    return {
        "seed": 0,
        "features": {"categorical": ["user", "country"], "numeric": ["x0", "x1"]},
        "tasks": [{"name": "click", "kind": "binary"}, {"name": "watch", "kind": "regression"}],
        "model": {"backbone": "metaheac", "options": {"experts": 3, "expert_hidden": [16], "critics": 2, "critic_hidden": [8]},
                  "embedding_dim": 4, "scenario": "country", **model},
        "train": {"epochs": 6, "batch_size": 64, "lr": 0.01, "progress": False},
    }


def test_learns_every_scenario_better_than_a_constant_and_reports_per_scenario(tmp_path):
    from mtlkit.config import RunConfig
    from mtlkit.run import evaluate_run, train_run

    torch.set_num_threads(1)
    train_run(RunConfig.model_validate(config()), tmp_path / "run",
              tables={"train": multi_scenario_table(1600, 0), "validation": multi_scenario_table(400, 1)})
    test = multi_scenario_table(800, 2)
    evaluation = evaluate_run(tmp_path / "run", test)
    by = evaluation.scenarios["data"]
    assert set(by) == {"c0", "c1", "c2", "c3"}
    # A constant scores AUC 0.5 and RMSE = the target's standard deviation, in every scenario.
    assert all(s["click"]["auc"] > 0.8 for s in by.values()), {k: s["click"]["auc"] for k, s in by.items()}
    watch = np.array(test.column("watch").to_pylist())
    assert evaluation.metrics["data"]["watch"]["rmse"] < 0.7 * watch.std()
    assert evaluation.gates is not None and {"experts/click", "critics/watch"} <= set(evaluation.gates)


@pytest.mark.parametrize("model,message", [
    ({"scenario": None}, r"model.scenario: backbone metaheac needs a scenario column"),
    ({"scenario": "device"}, r"model.scenario: 'device' is not a categorical feature"),
    ({"options": {"experts": 2, "critic_widths": [4]}}, r"critic_widths"),
])
def test_bad_configs_fail_before_the_run_directory_is_written(tmp_path, model, message):
    from mtlkit.config import RunConfig
    from mtlkit.run import train_run

    with pytest.raises((ConfigError, ValueError), match=message):
        train_run(RunConfig.model_validate(config(**model)), tmp_path / "run",
                  tables={"train": multi_scenario_table(200, 0), "validation": multi_scenario_table(100, 1)})
    assert not (tmp_path / "run").exists()
