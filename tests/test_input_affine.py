"""The backbone's first affine map skips the input gradient of the numeric columns, and nothing else changes."""

from __future__ import annotations

import pytest
import torch

from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.models import ModelSpec, build_model
from mtlkit.nn.input_affine import input_affine
from mtlkit.tasks import Task


def _operands(batch: int = 6, width: int = 11, out: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=g, requires_grad=True)
    weight = torch.randn(width, out, generator=g, requires_grad=True)
    bias = torch.randn(out, generator=g, requires_grad=True)
    return x, weight, bias


@pytest.mark.parametrize("block", [slice(8, 11), slice(0, 3), slice(4, 7), slice(5, 5)])
@pytest.mark.parametrize("batch", [1, 6])
def test_gradients_equal_addmm_outside_the_constant_block_and_zero_inside(block, batch):
    x, weight, bias = _operands(batch)
    upstream = torch.randn(batch, 5)
    y = input_affine(x, weight, bias, block)
    assert torch.allclose(y, torch.addmm(bias, x, weight))
    assert ("InputAffine" in type(y.grad_fn).__name__) == (block.stop > block.start)  # the fast path, unless nothing to skip
    y.backward(upstream)
    got = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    torch.addmm(bias, x, weight).backward(upstream)
    keep = torch.ones(x.shape[1], dtype=torch.bool)
    keep[block] = False
    assert torch.allclose(got[0][:, keep], x.grad[:, keep], atol=1e-6)
    assert got[0][:, ~keep].abs().sum() == 0  # not computed: exactly zero
    assert torch.allclose(got[1], weight.grad, atol=1e-6) and torch.allclose(got[2], bias.grad, atol=1e-6)


def test_without_bias_and_without_an_input_gradient():
    x, weight, _ = _operands()
    x = x.detach()  # only the weight trains (a frozen encoder)
    input_affine(x, weight, None, slice(8, 11)).sum().backward()
    assert torch.allclose(weight.grad, x.t() @ torch.ones(6, 5), atol=1e-6)


def test_a_linear_weight_passed_transposed_gets_its_gradient_in_its_own_layout():
    x, _, bias = _operands()
    linear = torch.nn.Linear(11, 5)
    input_affine(x, linear.weight.t(), linear.bias, slice(8, 11)).pow(2).sum().backward()
    ours, ours_x = linear.weight.grad.clone(), x.grad.clone()
    linear.weight.grad, x.grad = None, None
    linear(x).pow(2).sum().backward()
    assert ours.is_contiguous() and ours.shape == (5, 11)
    assert torch.allclose(ours, linear.weight.grad, atol=1e-5)
    assert torch.allclose(ours_x[:, :8], x.grad[:, :8], atol=1e-5)


def test_double_backward_matches_the_reference():
    """create_graph=True (a penalty on a gradient) differentiates the backward itself."""
    x, weight, bias = _operands()

    def penalty(affine) -> torch.Tensor:
        y = affine(x, weight, bias)
        (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
        return (gx[:, :8] ** 2).sum()  # only the columns both versions differentiate

    (ours,) = torch.autograd.grad(penalty(lambda *a: input_affine(*a, slice(8, 11))), weight)
    (reference,) = torch.autograd.grad(penalty(lambda x, w, b: torch.addmm(b, x, w)), weight)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-4)


def test_batched_jacobian_matches_one_backward_per_row():
    """``is_grads_batched`` (the balancers' vmapped Jacobian) runs the backward under vmap."""
    x, weight, bias = _operands()
    y = input_affine(x, weight, bias, slice(8, 11))
    losses = torch.stack([y[:, 0].sum(), (y[:, 1] ** 2).sum(), y.mean()])
    batched = torch.autograd.grad(losses, [x, weight], grad_outputs=torch.eye(3), is_grads_batched=True, retain_graph=True)
    for k in range(3):
        rows = torch.autograd.grad(losses[k], [x, weight], retain_graph=True)
        assert torch.allclose(batched[0][k], rows[0], atol=1e-5) and torch.allclose(batched[1][k], rows[1], atol=1e-5)
        assert batched[0][k][:, 8:].abs().sum() == 0


def test_bf16_autocast_casts_like_addmm_and_reaches_the_fp32_parameters():
    x, weight, bias = _operands()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = input_affine(x, weight, bias, slice(8, 11))
        reference = torch.addmm(bias, x, weight)
    assert ours.dtype == reference.dtype == torch.bfloat16
    assert torch.equal(ours, reference)
    ours.float().sum().backward()
    assert weight.grad is not None and weight.grad.dtype == torch.float32 and bias.grad.dtype == torch.float32


def _census_like_model(backbone: str, options: dict, seed: int = 0):
    schema = SchemaSpec(categorical=[CategoricalFeature(name="a"), CategoricalFeature(name="b")],
                        numeric=[NumericFeature(name="n1"), NumericFeature(name="n2"), NumericFeature(name="n3")])
    import pyarrow as pa

    table = pa.table({"a": ["x", "y", "z"] * 10, "b": ["u", "v"] * 15, "n1": [float(i) for i in range(30)],
                      "n2": [1.0] * 30, "n3": [0.5 * i for i in range(30)]})
    fitted = schema.fit(table)
    tasks = [Task(name="click", kind="binary"), Task(name="like", kind="binary")]
    torch.manual_seed(seed)
    model = build_model(ModelSpec(backbone=backbone, options=options, embedding_dim=4, tower=[4]), fitted, tasks)
    g = torch.Generator().manual_seed(1)
    inputs = {"categorical": torch.randint(0, 3, (7, 2), generator=g), "numeric": torch.randn(7, fitted.numeric_dim, generator=g)}
    return model, inputs


@pytest.mark.parametrize("backbone,options", [("mmoe", {"experts": 3, "expert_hidden": [8]}),
                                              ("omoe", {"experts": 3, "expert_hidden": [8]}),
                                              ("ple", {"levels": 2, "experts_per_task": 1, "shared_experts": 1, "expert_hidden": [8]}),
                                              ("shared_bottom", {"hidden": [8, 6]})])
def test_models_train_the_same_with_and_without_the_skipped_numeric_gradient(backbone, options):
    model, inputs = _census_like_model(backbone, options)
    model.train()

    def gradients(skip: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        columns = model.encoder.numeric_columns
        model._constant_columns = (lambda _inputs: columns) if skip else (lambda _inputs: None)  # type: ignore[method-assign]
        out = model(inputs)
        (out["click"].sum() + (out["like"] ** 2).sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    skipped, full = gradients(True), gradients(False)
    del model._constant_columns
    assert skipped.keys() == full.keys() and any("embedding" in n for n in skipped)
    for name in full:
        assert torch.allclose(skipped[name], full[name], atol=1e-6), name


def test_the_model_skips_the_numeric_columns_only_when_nothing_differentiates_them():
    model, inputs = _census_like_model("mmoe", {"experts": 2, "expert_hidden": [8]})
    assert model._constant_columns(inputs) == model.encoder.numeric_columns == slice(8, 11)
    numeric = inputs["numeric"].clone().requires_grad_()  # an attribution over the numeric features
    assert model._constant_columns({**inputs, "numeric": numeric}) is None
    model(dict(inputs, numeric=numeric))["click"].sum().backward()
    assert numeric.grad is not None and numeric.grad.abs().sum() > 0
    assert model.backbone.constant_input is None  # set for the model's call only, not left behind
    model.keep_shared_features = True  # MGDA-UB may differentiate the encoder output itself
    assert model._constant_columns(inputs) is None


def test_traced_graph_has_no_python_op():
    """Export traces the model as ``export_run`` does (grad mode on): the custom backward stays out of the graph."""
    from mtlkit.export import ServingModule

    model, inputs = _census_like_model("mmoe", {"experts": 2, "expert_hidden": [8]})
    model.eval()
    module = ServingModule(model, [Task(name="click", kind="binary")], ["categorical", "numeric"])
    traced = torch.jit.trace(module, (inputs["categorical"], inputs["numeric"]), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "PythonOp" not in graph and "aten::addmm" in graph
    assert torch.allclose(traced(inputs["categorical"], inputs["numeric"])[0], module(inputs["categorical"], inputs["numeric"])[0])


def test_runs_on_the_meta_device():
    """The memory estimate (mtlkit.sizing) runs the model on meta tensors, where autocast has no state."""
    with torch.device("meta"):
        x, weight, bias = (torch.empty(4, 6, requires_grad=True), torch.empty(6, 3, requires_grad=True),
                           torch.empty(3, requires_grad=True))
    assert input_affine(x, weight, bias, slice(4, 6)).shape == (4, 3)
