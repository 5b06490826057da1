"""ESMM, AITM, prediction-as-input, the position-bias shallow tower, score fusion and NDCG."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.errors import ConfigError
from mtlkit.metrics import auc, ndcg
from mtlkit.models import ModelSpec, build_model
from mtlkit.models.aitm import calibrator_loss
from mtlkit.models.esmm import product_logit
from mtlkit.models.fusion import FusionSpec
from mtlkit.models.multitask import MultiTaskModel
from mtlkit.models.relations import TaskRelations
from mtlkit.models.shallow_tower import ShallowTower, ShallowTowerSpec
from mtlkit.models.shared_bottom import SharedBottom
from mtlkit.nn import TabularEncoder
from mtlkit.tasks import Task, TaskMask
from mtlkit.train import Trainer, TrainSpec, evaluate

FUNNEL = [
    Task(name="ctr", kind="binary", label="click"),
    Task(name="cvr", kind="binary", label="buy", mask=TaskMask(column="click")),
    Task(name="ctcvr", kind="binary", label="click_buy"),
]
ESMM = {"esmm": [{"ctr": "ctr", "cvr": "cvr", "ctcvr": "ctcvr"}]}
FEATURES = SchemaSpec(categorical=[CategoricalFeature(name="user")], numeric=[NumericFeature(name="x0"), NumericFeature(name="x1")])


def funnel_table(n: int, seed: int) -> pa.Table:
    """Clicks and purchases with different drivers; purchases are only observed after a click."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 10, n)
    x = rng.standard_normal((n, 2))
    p_click = 1 / (1 + np.exp(-(x[:, 0] - 1)))
    p_buy = 1 / (1 + np.exp(-(2 * x[:, 1] + np.linspace(-1, 1, 10)[user])))
    click = rng.random(n) < p_click
    buy = click & (rng.random(n) < p_buy)
    return pa.table({"user": user, "x0": x[:, 0], "x1": x[:, 1], "click": click.astype(int),
                     "buy": buy.astype(int), "click_buy": buy.astype(int), "p_buy": p_buy})


def esmm_model(table, relations=ESMM, backbone="shared_bottom"):
    schema = FEATURES.fit(table)
    torch.manual_seed(0)
    options = {"hidden": [16]} if backbone == "shared_bottom" else {"expert_hidden": [16], "experts": 3}
    model = build_model(ModelSpec(backbone=backbone, options=options, tower=[8], relations=relations), schema, FUNNEL)
    return model, schema


# -- ESMM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 5])
def test_esmm_ctcvr_is_the_product_of_ctr_and_cvr(batch):
    table = funnel_table(50, 0)
    model, schema = esmm_model(table)
    out = model(schema.encode(table.slice(0, batch), FUNNEL).inputs)
    assert out["ctcvr"].shape == (batch,)
    expected = torch.sigmoid(out["ctr"]) * torch.sigmoid(out["cvr"])
    assert torch.allclose(torch.sigmoid(out["ctcvr"]), expected, atol=1e-6)
    assert "ctcvr" not in model.heads  # no tower of its own


def test_product_logit_is_stable_at_extremes():
    a = torch.tensor([30.0, -30.0, 0.0, 40.0], requires_grad=True)
    b = torch.tensor([30.0, 5.0, -80.0, 40.0])
    logit = product_logit(a, b)
    assert torch.isfinite(logit).all()
    assert logit[0] > 25 and logit[1] < -29 and logit[2] < -79
    logit.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_esmm_trains_cvr_only_through_ctcvr():
    table = funnel_table(64, 0)
    model, schema = esmm_model(table)
    assert model.loss_task_names == ["ctr", "ctcvr"]
    # A balancer over all three tasks would weigh a loss that does not exist.
    with pytest.raises(ConfigError, match="loss_task_names"):
        Trainer(model, FUNNEL, build_balancer(BalancerSpec(), FUNNEL), TrainSpec(progress=False))
    trained = [t for t in FUNNEL if t.name in model.loss_task_names]
    trainer = Trainer(model, FUNNEL, build_balancer(BalancerSpec(), trained),
                      TrainSpec(epochs=1, batch_size=64, progress=False, patience=None))
    cvr_head_before = [p.detach().clone() for p in model.heads["cvr"].parameters()]
    trainer.fit(schema.encode(table, FUNNEL).batches(64), schema.encode(table, FUNNEL))
    # CVR's tower moved, so CTCVR's loss reached it (there is no direct CVR loss to do it).
    assert any(not torch.equal(a, b) for a, b in zip(cvr_head_before, model.heads["cvr"].parameters()))
    assert set(trainer._epoch_losses) == {"ctr", "ctcvr"}


def test_esmm_learns_cvr_over_the_entire_space():
    train_table, test_table = funnel_table(6000, 0), funnel_table(3000, 1)
    model, schema = esmm_model(train_table, backbone="mmoe")
    trained = [t for t in FUNNEL if t.name in model.loss_task_names]
    trainer = Trainer(model, FUNNEL, build_balancer(BalancerSpec(), trained),
                      TrainSpec(epochs=8, batch_size=128, lr=1e-2, progress=False, patience=None))
    trainer.fit(schema.encode(train_table, FUNNEL).batches(128, shuffle=True), schema.encode(test_table, FUNNEL))
    test = schema.encode(test_table, FUNNEL)
    result = evaluate(model, FUNNEL, test)
    assert result["cvr"]["rows"] == int(test_table.column("click").to_numpy().sum())  # clicked rows only
    assert result["cvr"]["auc"] > 0.75 and result["ctr"]["auc"] > 0.7
    # Over all impressions the CVR tower ranks by the true purchase propensity.
    with torch.no_grad():
        p_cvr = torch.sigmoid(model.eval()(test.inputs)["cvr"]).numpy()
    truth = test_table.column("p_buy").to_numpy()
    assert np.corrcoef(p_cvr, truth)[0, 1] > 0.7


# -- AITM ---------------------------------------------------------------------------------------

def test_calibrator_is_nonnegative_and_zero_when_ordered():
    ordered = torch.tensor([[0.5, 0.2, 0.1], [0.9, 0.9, 0.3]])
    assert calibrator_loss(ordered, alpha=0.6) == 0
    violated = torch.tensor([[0.1, 0.4], [0.5, 0.3]])
    assert torch.isclose(calibrator_loss(violated, alpha=0.6), torch.tensor(0.6 * 0.3 / 2))
    assert (calibrator_loss(torch.rand(100, 3), alpha=1.0) >= 0).all()


def aitm_model(alpha=0.6):
    tasks = [Task(name="click", kind="binary"), Task(name="buy", kind="binary")]
    schema = FEATURES.fit(funnel_table(50, 0).rename_columns(["user", "x0", "x1", "click", "buy", "cb", "p"]))
    torch.manual_seed(0)
    relations = {"aitm": {"chain": ["click", "buy"], "alpha": alpha}}
    model = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [8]}, tower=[6], relations=relations), schema, tasks)
    return model, schema, tasks


def test_aitm_transfers_from_the_earlier_task_and_adds_the_calibrator():
    model, schema, tasks = aitm_model()
    table = funnel_table(32, 0).rename_columns(["user", "x0", "x1", "click", "buy", "cb", "p"])
    inputs = schema.encode(table, tasks).inputs
    out = model(inputs)
    assert out["click"].shape == out["buy"].shape == (32,)
    weights = model.transfer.last_weights["buy"]
    assert weights.shape == (32, 2) and torch.allclose(weights.sum(-1), torch.ones(32))
    penalties = model.task_penalties()
    assert set(penalties) == {"buy"} and penalties["buy"] >= 0
    # The later task's loss reaches the earlier task's tower through the transfer (no stop-gradient).
    out["buy"].sum().backward()
    assert model.heads["click"].tower[0].weight.grad.abs().sum() > 0


def test_aitm_calibrator_pulls_the_later_task_below_the_earlier():
    table = funnel_table(2000, 0).rename_columns(["user", "x0", "x1", "click", "buy", "cb", "p"])
    violations = {}
    for alpha in (0.0, 5.0):
        model, schema, tasks = aitm_model(alpha)
        encoded = schema.encode(table, tasks)
        Trainer(model, tasks, build_balancer(BalancerSpec(), tasks),
                TrainSpec(epochs=4, batch_size=100, lr=1e-2, progress=False, patience=None)).fit(encoded.batches(100), encoded)
        with torch.no_grad():
            out = model.eval()(encoded.inputs)
        violations[alpha] = float((torch.sigmoid(out["buy"]) - torch.sigmoid(out["click"])).clamp_min(0).mean())
    assert violations[5.0] < 0.5 * violations[0.0] + 1e-4


# -- prediction as input ------------------------------------------------------------------------

@pytest.mark.parametrize("stop_gradient", [True, False])
def test_prediction_input_stop_gradient(stop_gradient):
    tasks = [Task(name="click", kind="binary"), Task(name="watch", kind="regression")]
    schema = FEATURES.fit(funnel_table(20, 0))
    relations = {"prediction_inputs": [{"task": "watch", "source": "click", "stop_gradient": stop_gradient}]}
    model = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [8]}, tower=[4], relations=relations), schema, tasks)
    assert model.heads["watch"].tower[0].in_features == 8 + 1  # representation + pCTR
    out = model(schema.encode(funnel_table(20, 0), tasks, with_targets=False).inputs)
    out["watch"].sum().backward()
    click_grad = sum(float(p.grad.abs().sum()) for p in model.heads["click"].parameters() if p.grad is not None)
    assert (click_grad == 0) == stop_gradient


def test_relations_are_checked_against_the_tasks():
    schema = FEATURES.fit(funnel_table(20, 0))
    tasks = [Task(name="a", kind="binary"), Task(name="b", kind="binary")]
    cycle = {"prediction_inputs": [{"task": "a", "source": "b"}, {"task": "b", "source": "a"}]}
    with pytest.raises(ConfigError, match="cycle"):
        build_model(ModelSpec(relations=cycle), schema, tasks)
    with pytest.raises(ConfigError, match="unknown task 'zzz'"):
        build_model(ModelSpec(relations={"aitm": {"chain": ["a", "zzz"]}}), schema, tasks)
    with pytest.raises(ValueError, match="shared model"):
        ModelSpec(backbone="single_task", options={"hidden": [4]}, relations=ESMM)
    assert TaskRelations().order(["x", "y"]) == ["x", "y"]


# -- position-bias shallow tower ----------------------------------------------------------------

def test_shallow_tower_only_shapes_training_logits():
    tower = ShallowTower([6, 3], ["click"], ShallowTowerSpec(hidden=[4], position_dropout=0.0))
    encoder = TabularEncoder([4], numeric_dim=2, embedding_dim=3)
    model = MultiTaskModel(encoder, SharedBottom(encoder.output_dim, ["click"], SharedBottom.Options(hidden=[8])),
                           [Task(name="click", kind="binary")], shallow_tower=tower)
    inputs = {"categorical": torch.tensor([[1], [2]]), "numeric": torch.zeros(2, 2)}
    biased = [{**inputs, "bias": torch.tensor([[p, 1], [p, 2]])} for p in (1, 5)]
    model.train()
    assert not torch.allclose(model(biased[0])["click"], model(biased[1])["click"])
    model.eval()
    assert torch.equal(model(biased[0])["click"], model(biased[1])["click"])  # position never used at serving
    assert torch.equal(model(biased[0])["click"], model({**inputs, "bias": torch.zeros(2, 2, dtype=torch.long)})["click"])


def test_shallow_tower_position_dropout_rate_and_missing_serving():
    torch.manual_seed(0)
    tower = ShallowTower([6], ["click"], ShallowTowerSpec(hidden=[], position_dropout=0.1, serving="missing"))
    bias = torch.full((20000, 1), 3)
    with torch.no_grad():
        missing = tower.eval()(bias[:1] * 0)["click"]
        assert torch.equal(tower(bias[:5])["click"], missing.expand(5))  # serving: position as missing
        dropped = (tower.train()(bias)["click"] == missing).float().mean().item()
    assert abs(dropped - 0.1) < 0.01


def debias_table(n: int, seed: int) -> pa.Table:
    """Clicks = examination(position) × relevance(x); position is confounded with x (a prior ranker)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    relevance = 1 / (1 + np.exp(-(1.5 * x[:, 1] - 0.5)))
    # The old ranker put items with high x0 on top: x0 does not drive relevance, only examination.
    position = np.clip((4 - 2 * x[:, 0] + rng.normal(0, 0.5, n)).round(), 0, 9).astype(int)
    examination = 1.0 / (1 + position) ** 1.2
    click = rng.random(n) < relevance * examination
    return pa.table({"user": rng.integers(0, 5, n), "x0": x[:, 0], "x1": x[:, 1], "position": position,
                     "click": click.astype(int), "relevance": relevance})


def test_shallow_tower_recovers_relevance_under_position_bias():
    """Without the tower the model learns x0 (the old ranker's position proxy); with it, much less."""
    tasks = [Task(name="click", kind="binary")]
    train_table, test_table = debias_table(20000, 0), debias_table(5000, 1)
    schema = FEATURES.fit(train_table)
    bias_ids = lambda t: torch.as_tensor(t.column("position").to_numpy() + 1).unsqueeze(1)  # noqa: E731  (0 = missing)
    scores = {}
    for use_tower in (False, True):
        torch.manual_seed(0)
        encoder = TabularEncoder(schema.cardinalities, schema.numeric_dim, 4)
        model = MultiTaskModel(encoder, SharedBottom(encoder.output_dim, ["click"], SharedBottom.Options(hidden=[16])), tasks,
                               shallow_tower=ShallowTower([11], ["click"], ShallowTowerSpec(hidden=[8])) if use_tower else None)
        train = schema.encode(train_table, tasks)
        train.inputs["bias"] = bias_ids(train_table)
        Trainer(model, tasks, build_balancer(BalancerSpec(), tasks),
                TrainSpec(epochs=6, batch_size=256, lr=1e-2, progress=False, patience=None)).fit(train.batches(256, shuffle=True), train)
        test = schema.encode(test_table, tasks)
        test.inputs["bias"] = bias_ids(test_table) * 0
        with torch.no_grad():
            serving = torch.sigmoid(model.eval()(test.inputs)["click"]).numpy()
        scores[use_tower] = np.corrcoef(serving, test_table.column("relevance").to_numpy())[0, 1]
    assert scores[True] > scores[False] + 0.1, scores


# -- score fusion -------------------------------------------------------------------------------

def test_fusion_formulas():
    p = {"ctr": torch.tensor([0.5, 0.1]), "like": torch.tensor([0.2, 0.0]), "watch": torch.tensor([3.0, 0.0])}
    s = FusionSpec(kind="weighted_sum", weights={"ctr": 1.0, "like": 2.0}).score(p)
    assert torch.allclose(s, torch.tensor([0.9, 0.1]))
    s = FusionSpec(kind="product", weights={"ctr": 2.0, "watch": 0.5}, offsets={"watch": 1.0}).score(p)
    assert torch.allclose(s, torch.tensor([0.25 * 2.0, 0.01]))
    assert FusionSpec(kind="product", weights={"like": 1.0}).score(p)[1] == 0  # 0^w without log(0)
    with pytest.raises(ValueError, match="no weight"):
        FusionSpec(weights={"ctr": 1.0}, offsets={"watch": 1.0})


def test_model_fused_score_and_unknown_task():
    table = funnel_table(30, 0)
    schema = FEATURES.fit(table)
    fusion = {"kind": "product", "weights": {"ctr": 1.0, "ctcvr": 0.5}}
    model = build_model(ModelSpec(options={"hidden": [4]}, relations=ESMM, fusion=fusion), schema, FUNNEL).eval()
    out = model(schema.encode(table, FUNNEL).inputs)
    expected = torch.sigmoid(out["ctr"]) * torch.sigmoid(out["ctcvr"]) ** 0.5
    assert torch.allclose(model.fused_score(out), expected)
    with pytest.raises(ConfigError, match="fusion.weights: unknown task 'like'"):
        build_model(ModelSpec(options={"hidden": [4]}, fusion={"weights": {"like": 1.0}}), schema, FUNNEL)


# -- NDCG ---------------------------------------------------------------------------------------

def test_ndcg_matches_sklearn_per_group_mean():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 8)
    labels = rng.integers(0, 3, groups.size).astype(float)
    scores = rng.integers(0, 4, groups.size).astype(float)  # many ties
    for k in (None, 3):
        expected = np.mean([ndcg_score(labels[groups == g][None], scores[groups == g][None], k=k)
                            for g in range(40) if labels[groups == g].sum() > 0])
        assert ndcg(scores, labels, groups, k=k) == pytest.approx(expected, abs=1e-12)


def test_ndcg_edge_cases():
    groups = np.array([0, 0, 0, 1, 1])
    labels = np.array([0, 0, 1, 0, 0])  # group 1 has no positive: skipped
    assert ndcg(np.array([0.1, 0.2, 0.9, 0.5, 0.4]), labels, groups) == 1.0
    assert ndcg(np.array([0.9, 0.2, 0.1, 0.5, 0.4]), labels, groups) == pytest.approx(0.5)
    assert ndcg(np.array([0.9, 0.2, 0.1, 0.5, 0.4]), labels, groups, k=2) == 0.0
    constant = ndcg(np.zeros(5), labels, groups)  # ties: the expected value of a random order
    assert constant == pytest.approx((1 + 1 / np.log2(3) + 0.5) / 3)
    assert np.isnan(ndcg(np.ones(2), np.zeros(2), np.array([0, 0])))
    with pytest.raises(ValueError, match="group column"):
        ndcg(np.ones(2), np.ones(2))
    assert auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0


def test_ece_is_zero_when_calibrated_and_sees_a_scaled_rare_rate():
    from mtlkit.metrics import ece

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.004, 200_000)  # a share-like rate of 0.2%
    y = rng.random(p.size) < p
    assert ece(p, y) < 0.0003
    assert ece(3 * p, y) > 0.003  # three times too high is seen, although every p is tiny
    assert ece(np.array([0.2, 0.8]), np.array([0, 1]), bins=1) == pytest.approx(0.0)
