"""Small categorical fields computed in vocabulary space: the same model, outputs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.models import ModelSpec, build_model
from mtlkit.nn.vocabulary_affine import FactoredInput, VocabularyPlan
from mtlkit.optim import EmbeddingOptimizerSpec, build_optimizers
from mtlkit.tasks import Task

TASKS = [Task(name="click", kind="binary"), Task(name="like", kind="binary")]


def _model(backbone: str, options: dict, batch: int = 64, seed: int = 0, dim: int = 16):
    """Fields a (3 values), b (5) and u (40), plus the unseen row each: with a batch of 64 and 16 dims,
    a and b qualify (rows <= 64·16/128 = 8), u does not."""
    import pyarrow as pa

    schema = SchemaSpec(categorical=[CategoricalFeature(name="a"), CategoricalFeature(name="u"), CategoricalFeature(name="b")],
                        numeric=[NumericFeature(name="n1"), NumericFeature(name="n2")])
    rows = 200
    table = pa.table({"a": [f"a{i % 3}" for i in range(rows)], "u": [f"u{i % 40}" for i in range(rows)],
                      "b": [f"b{i % 5}" for i in range(rows)], "n1": [float(i) for i in range(rows)],
                      "n2": [0.5 * (i % 7) for i in range(rows)]})
    fitted = schema.fit(table)
    torch.manual_seed(seed)
    model = build_model(ModelSpec(backbone=backbone, options=options, embedding_dim=dim, tower=[4]), fitted, TASKS)
    g = torch.Generator().manual_seed(1)
    cards = fitted.cardinalities
    ids = torch.stack([torch.randint(0, c, (batch,), generator=g) for c in cards], dim=1)
    return model, {"categorical": ids, "numeric": torch.randn(batch, fitted.numeric_dim, generator=g)}


def _plain(model):
    twin = copy.deepcopy(model)
    twin._factored_input = lambda inputs: None  # the usual path: the encoder output, then the first layer
    return twin


BACKBONES = [
    ("mmoe", {"experts": 3, "expert_hidden": [8]}),
    ("omoe", {"experts": 3, "expert_hidden": [8]}),
    ("mmoe", {"experts": 3, "expert_hidden": [8], "batch_norm": True}),
    ("youtube_mmoe", {"experts": 2, "expert_hidden": [8], "bottom": [6], "gate_dropout": 0.0}),
    ("ple", {"levels": 2, "experts_per_task": 1, "shared_experts": 1, "expert_hidden": [8]}),
    ("cgc", {"experts_per_task": 2, "shared_experts": 1, "expert_hidden": [8]}),
    ("shared_bottom", {"hidden": [8, 6]}),
]


@pytest.mark.parametrize("backbone,options", BACKBONES)
def test_the_model_trains_the_same_through_vocabulary_space(backbone, options):
    model, inputs = _model(backbone, options)
    plain = _plain(model)
    factored = model._factored_input(inputs)
    assert isinstance(factored, FactoredInput) and factored.plan.fields == (0, 2)  # a, b; not u (41 rows)
    assert factored.constant == slice(16, 18)  # u's 16 columns kept dense, then the 2 raw numerics
    out, ref = model(inputs), plain(inputs)
    for name in ref:
        assert torch.allclose(out[name], ref[name], atol=1e-6)
    (out["click"].sum() + 2 * out["like"].sum()).backward()
    (ref["click"].sum() + 2 * ref["like"].sum()).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_inference_without_gradients_reads_vocabulary_space_and_agrees():
    model, inputs = _model("mmoe", {"experts": 2, "expert_hidden": [8]})
    model.eval()
    with torch.no_grad():
        assert model._factored_input(inputs) is not None
        out, ref = model(inputs), _plain(model)(inputs)
    assert all(torch.allclose(out[k], ref[k], atol=1e-6) for k in ref)


def test_the_usual_path_where_vocabulary_space_does_not_apply():
    model, inputs = _model("mmoe", {"experts": 2, "expert_hidden": [8]})
    one_row = {k: v[:1] for k, v in inputs.items()}
    assert model._factored_input(one_row) is None  # no vocabulary is small next to one row
    assert model(one_row)["click"].shape == (1,)
    model.eval()
    assert model._factored_input(inputs) is None  # eval with gradients: an attribution reads the encoder output
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 GEMMs the usual way, as a compiled or exported model computes
        assert model._factored_input(inputs) is None
    model.keep_shared_features = True  # MGDA-UB differentiates the encoder output
    assert model._factored_input(inputs) is None
    model.keep_shared_features = False
    narrow, _ = _model("mmoe", {"experts": 2, "expert_hidden": [8]}, dim=8)
    assert narrow._factored_input(inputs) is None  # 8-wide embeddings: the sums would cost what the GEMM saves
    other, _ = _model("cross_stitch", {})
    assert not other.backbone.takes_factored_input() and other._factored_input(inputs) is None


def test_numeric_inputs_that_require_a_gradient_get_it():
    model, inputs = _model("mmoe", {"experts": 2, "expert_hidden": [8]})
    plain = _plain(model)
    numeric = inputs["numeric"].clone().requires_grad_()
    factored = model._factored_input({**inputs, "numeric": numeric})
    assert factored is not None and factored.constant is None
    model({**inputs, "numeric": numeric})["click"].sum().backward()
    reference = inputs["numeric"].clone().requires_grad_()
    plain({**inputs, "numeric": reference})["click"].sum().backward()
    assert torch.allclose(numeric.grad, reference.grad, atol=1e-6) and numeric.grad.abs().sum() > 0


@pytest.mark.parametrize("balancer", ["pcgrad", "mgda", "gradnorm"])
def test_gradient_balancers_step_the_same(balancer):
    model, inputs = _model("mmoe", {"experts": 2, "expert_hidden": [8]})
    plain = _plain(model)
    targets = {t.name: torch.randint(0, 2, (64,)).float() for t in TASKS}
    grads = []
    for m in (model, plain):
        torch.manual_seed(3)
        b = build_balancer(BalancerSpec(name=balancer), TASKS)
        logits = m(inputs)
        losses = {t.name: torch.nn.functional.binary_cross_entropy_with_logits(logits[t.name], targets[t.name]) for t in TASKS}
        b.backward(losses, m)
        grads.append([p.grad.clone() if p.grad is not None else None for p in m.parameters()])
    for g, r in zip(*grads):
        assert (g is None) == (r is None)
        if g is not None:
            assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)


def test_plan_layout_and_an_nn_linear_weight():
    plan = VocabularyPlan.build([3, 2, 4], [0, 3, 5], fields=[0, 2], columns=[0, 4], dim=2)
    assert plan.width == 4 and plan.rows.tolist() == [0, 1, 2, 0, 5, 6, 7, 8] and not plan.contiguous_columns
    table = torch.randn(9, 2, requires_grad=True)
    ids = torch.tensor([[2, 1, 3], [0, 0, 0]])
    dense = table[ids[:, 1] + 3]  # field 1 looked up as usual: x's columns 2-3
    x = FactoredInput(plan, table, ids, dense, torch.tensor([2, 3]))
    linear = torch.nn.Linear(6, 3)
    y = x.affine(linear.weight.t(), linear.bias)
    full = torch.cat([table[ids[:, 0]], dense, table[ids[:, 2] + 5]], dim=1)
    assert torch.allclose(y, linear(full), atol=1e-6)
    y.pow(2).sum().backward()
    ours_w, ours_t = linear.weight.grad.clone(), table.grad.clone()
    linear.weight.grad, table.grad = None, None
    linear(torch.cat([table[ids[:, 0]], table[ids[:, 1] + 3], table[ids[:, 2] + 5]], dim=1)).pow(2).sum().backward()
    assert torch.allclose(ours_w, linear.weight.grad, atol=1e-5) and torch.allclose(ours_t, table.grad, atol=1e-5)
    assert ours_t[[1, 6, 7]].abs().sum() == 0  # rows no id of this batch looked up: no gradient


def test_the_memory_estimate_runs_through_vocabulary_space_on_meta():
    model, inputs = _model("mmoe", {"experts": 2, "expert_hidden": [8]})
    with torch.device("meta"):
        meta_model = copy.deepcopy(model).to("meta")
        meta_inputs = {k: v.to("meta") for k, v in inputs.items()}
        assert meta_model._factored_input(meta_inputs) is not None
        out = meta_model(meta_inputs)
    assert out["click"].shape == (64,) and out["click"].device.type == "meta"



@pytest.mark.parametrize("balancer", ["fixed", "pcgrad"])
def test_a_sparse_table_gets_the_rows_the_batch_looked_up_and_steps_the_same(balancer):
    """Row-wise optimisers: the gradient holds exactly the looked-up rows (lazy Adam steps every row it holds)."""
    model, inputs = _model("mmoe", {"experts": 2, "expert_hidden": [8]})
    plain = _plain(model)
    targets = {t.name: torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(5)).float() for t in TASKS}
    weights, grads = [], []
    for m in (model, plain):
        optimizers = build_optimizers(m, EmbeddingOptimizerSpec(name="lazy_adam", lr=0.1), lr=1e-2)
        assert m.encoder.embedding.sparse_gradients
        if m is model:
            factored = m._factored_input(inputs)
            assert factored is not None and factored.sparse
        logits = m(inputs)
        losses = {t.name: torch.nn.functional.binary_cross_entropy_with_logits(logits[t.name], targets[t.name]) for t in TASKS}
        optimizers.zero_grad()
        build_balancer(BalancerSpec(name=balancer), TASKS).backward(losses, m)
        grad = m.encoder.embedding.table.weight.grad
        assert grad.is_sparse
        grads.append(grad.coalesce())
        optimizers.step()
        weights.append({k: v.clone() for k, v in m.state_dict().items()})
    offsets = model.encoder.embedding.offsets
    looked_up = torch.unique(inputs["categorical"] + offsets)
    assert torch.equal(grads[0].indices()[0], looked_up) and torch.equal(grads[1].indices()[0], looked_up)
    torch.testing.assert_close(grads[0].values(), grads[1].values(), rtol=1e-4, atol=1e-6)
    for key in weights[1]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backbone,options,pooling", [("mmoe", {"experts": 2, "expert_hidden": [8]}, "din"),
                                                      ("shared_bottom", {"hidden": [8]}, "din"),
                                                      ("mmoe", {"experts": 2, "expert_hidden": [8]}, "dien")])
def test_sequence_features_pool_as_usual_next_to_vocabulary_space(backbone, options, pooling):
    """DIN/DIEN attend against their target field's embeddings, looked up on their own when that field is in vocabulary space."""
    import pyarrow as pa

    from mtlkit.data.schema import SequenceFeature

    rows = 96
    table = pa.table({"a": [f"a{i % 3}" for i in range(rows)], "item": [f"i{i % 5}" for i in range(rows)],
                      "u": [f"u{i % 40}" for i in range(rows)], "n1": [float(i % 11) for i in range(rows)],
                      "hist": [f"i{(i + 1) % 5}|i{(i + 3) % 5}" if i % 4 else "" for i in range(rows)],
                      "tags": [f"t{i % 7}|t{(i * 3) % 7}" for i in range(rows)]})
    schema = SchemaSpec(categorical=[CategoricalFeature(name="a"), CategoricalFeature(name="item"), CategoricalFeature(name="u")],
                        numeric=[NumericFeature(name="n1")],
                        sequences=[SequenceFeature(name="hist", max_len=3, separator="|", share_vocabulary_with="item",
                                                   pooling=pooling, target="item"),
                                   SequenceFeature(name="tags", max_len=2, separator="|", pooling="mean")])
    fitted = schema.fit(table)
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone=backbone, options=options, embedding_dim=16, tower=[4]), fitted, TASKS)
    inputs = fitted.encode(table, [], with_targets=False).inputs
    plain = _plain(model)
    factored = model._factored_input(inputs)
    assert factored is not None and factored.plan.fields == (0, 1)  # a and item; u (41 rows) stays dense
    assert factored.dense.shape[1] == 16 + 1 + 2 * 16  # u, n1, then the two pooled sequences
    torch.manual_seed(1)  # DIEN's negative samples: the same draws for both
    out, aux = model(inputs), model.auxiliary_losses()
    torch.manual_seed(1)
    ref, ref_aux = plain(inputs), plain.auxiliary_losses()
    assert aux.keys() == ref_aux.keys() and (pooling == "din") == (not aux)
    for name in ref:
        assert torch.allclose(out[name], ref[name], atol=1e-6)
    (out["click"].sum() + sum(aux.values())).backward()
    (ref["click"].sum() + sum(ref_aux.values())).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name
