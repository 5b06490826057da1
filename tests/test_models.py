import numpy as np
import pyarrow as pa
import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.models import BACKBONES, IndependentTaskModels, ModelSpec, build_model
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, evaluate

TASKS = [
    Task(name="a", kind="binary"),
    Task(name="b", kind="regression"),
    Task(name="c", kind="multiclass", n_classes=3),
]


def toy_table(n: int, seed: int) -> pa.Table:
    """Three related tasks that a model must learn from a categorical and two numeric inputs."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 5, n)
    x = rng.standard_normal((n, 2))
    signal = x[:, 0] * 1.5 - x[:, 1] + np.array([-1, 0, 1, 2, -2])[cat]
    return pa.table({
        "cat": cat, "x0": x[:, 0], "x1": x[:, 1],
        "a": (signal > 0).astype(int),
        "b": signal + 0.1 * rng.standard_normal(n),
        "c": np.digitize(signal, [-1, 1]),
    })


SPEC = SchemaSpec(categorical=[CategoricalFeature(name="cat")], numeric=[NumericFeature(name="x0"), NumericFeature(name="x1")])


def scenario_of(backbone: str) -> dict:
    """STAR and MetaHeac need a scenario column (model.scenario): the categorical feature here."""
    return {"scenario": "cat"} if BACKBONES.get(backbone).needs_scenario else {}


@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("batch", [1, 7])
def test_output_shapes(backbone, batch):
    table = toy_table(50, 0)
    schema = SPEC.fit(table)
    model = build_model(ModelSpec(backbone=backbone, tower=[4], **scenario_of(backbone)), schema, TASKS).eval()
    encoded = schema.encode(table.slice(0, batch), TASKS)
    out = model(encoded.inputs)
    assert out["a"].shape == (batch,) and out["b"].shape == (batch,) and out["c"].shape == (batch, 3)


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_every_backbone_beats_a_constant_predictor(backbone):
    train_table, test_table = toy_table(1500, 0), toy_table(500, 1)
    schema = SPEC.fit(train_table)
    train, test = schema.encode(train_table, TASKS), schema.encode(test_table, TASKS)
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone=backbone, embedding_dim=4, **scenario_of(backbone)), schema, TASKS)
    trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(), TASKS),
                      TrainSpec(epochs=15, batch_size=64, lr=3e-3, progress=False, patience=None))
    trainer.fit(train.batches(64, shuffle=True), test)
    result = evaluate(model, TASKS, test)
    # Constant predictors: AUC 0.5; RMSE = std of the target; accuracy = majority share.
    b = test.targets["b"].numpy()
    majority = np.bincount(test.targets["c"].numpy()).max() / len(b)
    assert result["a"]["auc"] > 0.9
    assert result["b"]["rmse"] < 0.5 * b.std()
    assert result["c"]["accuracy"] > majority + 0.2


def test_single_task_shares_nothing():
    schema = SPEC.fit(toy_table(50, 0))
    model = build_model(ModelSpec(backbone="single_task", options={"hidden": [8]}), schema, TASKS)
    assert isinstance(model, IndependentTaskModels)
    assert list(model.shared_parameters()) == []
    encoded = schema.encode(toy_table(16, 0), TASKS)
    model(encoded.inputs)["a"].sum().backward()
    for name in ("b", "c"):
        assert all(p.grad is None for p in model.task_parameters(name)), f"task {name} got a's gradient"
    # Same per-task capacity as shared-bottom with the same hidden layers.
    shared = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [8]}), schema, TASKS)
    per_task = sum(p.numel() for p in model.per_task["a"].parameters())
    path_a = sum(p.numel() for p in shared.shared_parameters()) + sum(p.numel() for p in shared.task_parameters("a"))
    assert per_task == path_a


def test_unknown_backbone_and_option_are_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'mmmoe'"):
        ModelSpec(backbone="mmmoe")
    with pytest.raises(ValueError, match="hiden"):
        ModelSpec(backbone="shared_bottom", options={"hiden": [3]})


def test_embedding_table_backends_are_interchangeable():
    """`model.embedding_table`: the per-field layout with the fused table's rows gives the same model output."""
    from mtlkit.nn import EMBEDDING_TABLES

    table = toy_table(64, 0)
    schema = SPEC.fit(table)
    batch = schema.encode(table, TASKS).take(slice(0, 16))
    models = {}
    for name in ("fused", "per_field"):
        torch.manual_seed(0)
        models[name] = build_model(ModelSpec(backbone="mmoe", options={"experts": 2, "expert_hidden": [8]}, embedding_table=name),
                                   schema, TASKS).eval()
    fused, per_field = models["fused"], models["per_field"]
    per_field.encoder.embedding.load_fused(fused.encoder.embedding)
    rest = {k: v for k, v in fused.state_dict().items() if not k.startswith("encoder.embedding.")}
    per_field.load_state_dict(rest, strict=False)
    a, b = fused(batch.inputs), per_field(batch.inputs)
    assert all(torch.allclose(a[t.name], b[t.name], atol=1e-6) for t in TASKS)
    assert isinstance(per_field.encoder.embedding, EMBEDDING_TABLES.get("per_field"))
    with pytest.raises(Exception, match="unknown embedding_table 'sharded'; choose one of: fused, per_field"):
        ModelSpec(embedding_table="sharded")
