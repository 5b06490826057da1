"""Embedding tables with sparse gradients inside models: the same gradients as the dense path,
every balancer on touched rows only, bf16 autocast, export, and no table-sized tensor per step."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mtlkit.balancing import BALANCERS, BalancerSpec, build_balancer
from mtlkit.data.schema import FittedCategorical, FittedNumeric, FittedSchema
from mtlkit.diagnostics.gradients import task_gradient_stats
from mtlkit.errors import ConfigError
from mtlkit.models import ModelSpec, build_model
from mtlkit.nn import sparse_weights
from mtlkit.optim import EmbeddingOptimizerSpec, build_optimizers, clip_grad_norm_
from mtlkit.tasks import Task

from test_balancers import OPTIONS

TASKS = [Task(name="a", kind="binary"), Task(name="b", kind="binary")]


def _schema(buckets: int) -> FittedSchema:
    return FittedSchema(
        categorical=[FittedCategorical("user", [], buckets), FittedCategorical("item", [], buckets),
                     FittedCategorical("device", ["x", "y", "z"])],
        numeric=[FittedNumeric("price", "standard", None, 0.0, 1.0, False)],
    )


def _model(buckets: int = 500, sparse: bool = True, backbone: str = "mmoe", seed: int = 0):
    torch.manual_seed(seed)
    options = {"experts": 2, "expert_hidden": [8]} if backbone == "mmoe" else {"hidden": [8]}
    model = build_model(ModelSpec(backbone=backbone, options=options, embedding_dim=4, tower=[4]), _schema(buckets), TASKS)
    model.encoder.embedding.set_sparse_gradients(sparse)
    return model


def _batch(rows: int = 32, buckets: int = 500, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, buckets, (rows,), generator=g) % 40,  # repeats: duplicate ids
                       torch.randint(0, buckets, (rows,), generator=g),
                       torch.randint(0, 4, (rows,), generator=g)], dim=1)
    inputs = {"categorical": ids, "numeric": torch.randn(rows, 1, generator=g)}
    targets = {"a": (torch.rand(rows, generator=g) < 0.3).float(), "b": (torch.rand(rows, generator=g) < 0.6).float()}
    return inputs, targets


def _losses(model, inputs, targets):
    logits = model(inputs)
    return {t.name: t.compute_loss(logits[t.name].float(), targets[t.name], None, torch.ones_like(targets[t.name], dtype=torch.bool))
            for t in TASKS}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sparse_mode_gives_the_dense_gradient_as_a_coo_tensor():
    inputs, targets = _batch()
    grads = {}
    for sparse in (False, True):
        model = _model(sparse=sparse)
        sum(_losses(model, inputs, targets).values()).backward()
        grad = model.encoder.embedding.table.weight.grad
        assert grad.is_sparse == sparse
        if sparse:  # one row per lookup (3 fields × 32 rows), before coalescing
            assert grad._nnz() == 3 * 32
        grads[sparse] = _grads(model)
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-7)


def _balancer_grads(name: str, sparse: bool, options: dict | None = None) -> dict[str, torch.Tensor]:
    model = _model(sparse=sparse)
    model.keep_shared_features = name == "mgda_ub"  # as the trainer sets it
    balancer = build_balancer(BalancerSpec(name=name, options={**OPTIONS.get(name, {}), **(options or {})}), TASKS)
    inputs, targets = _batch()
    torch.manual_seed(5)  # random methods (graddrop, rlw) draw the same numbers in both modes
    balancer.backward(_losses(model, inputs, targets), model)
    if sparse:
        table = model.encoder.embedding.table.weight
        assert table.grad is not None and table.grad.is_sparse
    return _grads(model)


RANDOM_PER_COLUMN = ["graddrop"]  # one random draw per column of J: other columns, other draws
# State per column of J kept across steps (MoCo's tracked gradients, ExcessMTL's squared-gradient
# sums, MoDo's and SDMGrad's earlier Jacobians): a table's touched rows change every step, so these
# methods leave sparse tables outside J (sparse_tables: outside is their only setting).
STATE_PER_COLUMN = ["moco", "excess_mtl", "modo", "sdmgrad"]


@pytest.mark.parametrize("name", STATE_PER_COLUMN)
def test_methods_with_per_column_state_train_sparse_tables_outside_the_jacobian(name):
    with pytest.raises(ValueError, match="sparse_tables"):
        BalancerSpec(name=name, options={"sparse_tables": "jacobian"})
    table = "encoder.embedding.table.weight"
    got, plain = _balancer_grads(name, True), _balancer_grads("fixed", True)   # the table gets Σ_k ∇f_k
    torch.testing.assert_close(got[table], plain[table], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", [n for n in BALANCERS.names() if n not in RANDOM_PER_COLUMN + STATE_PER_COLUMN])
def test_every_balancer_gives_the_dense_result_on_touched_rows(name):
    """The Jacobian over the touched rows (and MGDA-UB's, GradNorm's, the loss weightings' own
    backward passes) give the gradients of the dense path: rows outside the batch add only zero
    columns to J."""
    dense, sparse = _balancer_grads(name, False), _balancer_grads(name, True)
    assert dense.keys() == sparse.keys()
    for key in dense:
        torch.testing.assert_close(sparse[key], dense[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


def test_graddrop_on_touched_rows_keeps_one_sign_per_coordinate():
    """GradDrop draws per column, so the two layouts draw differently; its defining property holds
    on the touched rows: each coordinate of the update is the sum of the tasks' positive or of
    their negative gradient components (zero outside the batch's rows)."""
    update = _balancer_grads("graddrop", True, {"leak": {}})["encoder.embedding.table.weight"]
    model = _model(sparse=False)
    losses = _losses(model, *_batch())
    table = model.encoder.embedding.table.weight
    per_task = torch.stack([torch.autograd.grad(losses[t], table, retain_graph=True)[0] for t in ("a", "b")])
    positive, negative = per_task.clamp(min=0).sum(0), per_task.clamp(max=0).sum(0)
    matches = torch.isclose(update, positive, atol=1e-7) | torch.isclose(update, negative, atol=1e-7)
    assert bool(matches.all())
    assert bool((update != 0).any()) and bool(((positive != 0) & (negative != 0) & (update == positive)).any())


def test_tables_outside_the_jacobian_get_the_plain_sum():
    """sparse_tables: outside — the table gets Σ_k f_k's gradient (equal weighting's), the dense
    shared part MGDA's aggregate of the Jacobian without the table."""
    outside = _balancer_grads("mgda", True, {"sparse_tables": "outside"})
    equal = _balancer_grads("fixed", True)
    key = "encoder.embedding.table.weight"
    torch.testing.assert_close(outside[key], equal[key])
    model = _model(sparse=False)
    model.encoder.embedding.table.weight.requires_grad_(False)  # J over the dense shared part only
    inputs, targets = _batch()
    build_balancer(BalancerSpec(name="mgda", options=OPTIONS["mgda"]), TASKS).backward(_losses(model, inputs, targets), model)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(outside[name], grad, rtol=1e-5, atol=1e-7)
    expert = "backbone.experts.layers.0.weight"
    assert not torch.allclose(outside[expert], equal[expert])  # MGDA's weights are not equal weighting's


def test_gradnorm_refuses_a_sparse_table_as_its_layer():
    model = _model(sparse=True)
    balancer = build_balancer(BalancerSpec(name="gradnorm", options={"layer": "encoder.embedding.table.weight"}), TASKS)
    with pytest.raises(ConfigError, match="options.layer 'encoder.embedding.table.weight' is an embedding table with sparse gradients"):
        balancer.backward(_losses(model, *_batch()), model)


def test_gradient_diagnostics_on_touched_rows_equal_the_dense_ones():
    stats = {}
    for sparse in (False, True):
        model = _model(sparse=sparse)
        stats[sparse] = task_gradient_stats(_losses(model, *_batch()), model, ["a", "b"])
    for got, want in zip(stats[True], stats[False]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_per_field_tables_have_sparse_gradients_too():
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="mmoe", options={"experts": 2, "expert_hidden": [8]}, embedding_dim=4,
                                  embedding_table="per_field", tower=[4]), _schema(500), TASKS)
    reference = _model(sparse=False)
    model.encoder.embedding.load_fused(reference.encoder.embedding)
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if "embedding" not in k}, strict=False)
    opt = build_optimizers(model, EmbeddingOptimizerSpec(per_field={"device": {"name": "sgd"}}), lr=1e-3,
                           field_names=["user", "item", "device"])
    assert [type(o).__name__ for o in opt.tables] == ["RowWiseAdagrad", "RowSGD"]  # user+item share one, no row ranges
    assert all(o.param_groups[0]["rows"] is None for o in opt.tables)
    inputs, targets = _batch()
    sum(_losses(model, inputs, targets).values()).backward()
    sum(_losses(reference, inputs, targets).values()).backward()
    fused = reference.encoder.embedding.table.weight.grad
    start = 0
    for table in model.encoder.embedding.tables:
        assert table.weight.grad.is_sparse
        rows = table.weight.shape[0]
        torch.testing.assert_close(table.weight.grad.to_dense(), fused[start:start + rows], rtol=1e-5, atol=1e-7)
        start += rows


def test_compiled_model_keeps_sparse_gradients():
    """torch.compile cannot compile sparse kernels; the lookup runs eagerly (a graph break) and the
    compiled rest of the model gives the eager gradients."""
    inputs, targets = _batch()
    eager, compiled = _model(), _model()
    sum(_losses(eager, inputs, targets).values()).backward()
    sum(_losses(torch.compile(compiled), inputs, targets).values()).backward()
    got, want = _grads(compiled), _grads(eager)
    assert compiled.encoder.embedding.table.weight.grad.is_sparse
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains_on_the_sparse_path():
    inputs, targets = _batch(rows=64)
    grads = {}
    for sparse in (False, True):
        model = _model(sparse=sparse)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = _losses(model, inputs, targets)
        sum(losses.values()).backward()
        grad = model.encoder.embedding.table.weight.grad
        assert grad.dtype == torch.float32  # fp32 rows into the fp32 table optimiser
        grads[sparse] = grad.to_dense()
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-7)
    model = _model()
    opt = build_optimizers(model, EmbeddingOptimizerSpec(lr=0.05), lr=1e-2)
    first = last = None
    for _ in range(30):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(_losses(model, inputs, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
    assert last < 0.8 * first


def test_a_gradient_scaler_unscales_and_skips_sparse_table_gradients():
    """The fp16 recipe (scale, unscale_ and step per optimiser of the set, update once): the same
    weights as unscaled training, and a table gradient that overflowed skips the table's step."""
    inputs, targets = _batch()
    weights = {}
    for scaled in (False, True):
        model = _model()
        opt = build_optimizers(model, EmbeddingOptimizerSpec(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for _ in range(3):
            opt.zero_grad()
            loss = sum(_losses(model, inputs, targets).values())
            if not scaled:
                loss.backward()
                opt.step()
                continue
            scaler.scale(loss).backward()
            for o in opt.optimizers:
                scaler.unscale_(o)
                scaler.step(o)
            scaler.update()
        weights[scaled] = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=0, atol=1e-7, msg=key)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt.zero_grad()
    scaler.scale(sum(_losses(model, inputs, targets).values())).backward()
    model.encoder.embedding.table.weight.grad._values()[0, 0] = float("inf")
    for o in opt.optimizers:
        scaler.unscale_(o)
        scaler.step(o)
    scaler.update()
    # Each optimiser of the set skips on its own overflow (torch.amp's rule for several optimisers).
    assert torch.equal(model.encoder.embedding.table.weight, before["encoder.embedding.table.weight"])
    assert scaler.get_scale() == 512.0


def test_sparse_mode_exports_like_the_dense_model():
    from mtlkit.export import ServingModule

    model = _model(sparse=True).eval()
    inputs, _ = _batch(rows=8)
    module = ServingModule(model, TASKS, ["categorical", "numeric"]).eval()
    example = (inputs["categorical"], inputs["numeric"])
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        reference = module(*example)
        dense = ServingModule(_model(sparse=False).eval(), TASKS, ["categorical", "numeric"]).eval()(*example)
    for got, want, plain in zip(traced(*example), reference, dense):
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(plain, want)  # the mode changes gradients only, never predictions


def test_sparse_mode_exports_to_onnx(tmp_path):
    import onnxruntime

    from mtlkit.export import ServingModule, _export_onnx  # what `mtlkit export --format onnx` runs

    model = _model(sparse=True).eval()
    inputs, _ = _batch(rows=8)
    module = ServingModule(model, TASKS, ["categorical", "numeric"]).eval()
    example = (inputs["categorical"], inputs["numeric"])
    with torch.no_grad():
        _export_onnx(module, example, tmp_path / "model.onnx", ["categorical", "numeric"], ["a", "b"], None)
        reference = module(*example)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    outputs = session.run(None, {"categorical": example[0].numpy(), "numeric": example[1].numpy()})
    for got, want in zip(outputs, reference):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-6)


class _NewTensors(TorchDispatchMode):
    """The largest tensor an op creates (values of a sparse one), ignoring in-place results on
    tensors that existed before (the weights and the optimiser state)."""

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known, self.largest, self.where = known, 0, ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            if t.is_sparse:
                size = t._values().numel()
            elif t.untyped_storage().data_ptr() in self.known:
                continue
            else:
                size = t.numel()
            if size > self.largest:
                self.largest, self.where = size, str(func)
        return out


ROWS = 200_000  # per hashed field: a 400k-row table, 1.6M values; dense parameters < 2k values


def _step(model, opt, balancer, inputs, targets) -> None:
    opt.zero_grad()
    losses = _losses(model, inputs, targets)
    task_gradient_stats(losses, model, ["a", "b"])
    balancer.backward(losses, model)
    clip_grad_norm_([p for o in opt.optimizers for g in o.param_groups for p in g["params"]], 1.0)
    opt.step()


@pytest.mark.parametrize("balancer_name,table_optimizer", [("pcgrad", "rowwise_adagrad"), ("mgda", "lazy_adam"),
                                                           ("fixed", "sgd"), ("upgrad", "rowwise_adagrad")])
def test_no_table_sized_tensor_is_created_in_a_training_step(balancer_name, table_optimizer):
    """Forward, gradient diagnostics, the balancer's backward, clipping, the optimiser step and
    zero_grad: nothing of the table's size is allocated (the dense path is caught doing it)."""
    inputs, targets = _batch(rows=64, buckets=ROWS)
    for name in (table_optimizer, "dense"):
        model = _model(buckets=ROWS, sparse=name != "dense")
        opt = build_optimizers(model, EmbeddingOptimizerSpec(name=name), lr=1e-3)
        balancer = build_balancer(BalancerSpec(name=balancer_name), TASKS)
        _step(model, opt, balancer, inputs, targets)  # the first step creates the optimiser state
        known = {t.untyped_storage().data_ptr() for o in opt.optimizers for s in o.state.values()
                 for t in s.values() if isinstance(t, torch.Tensor)}
        known |= {p.untyped_storage().data_ptr() for p in model.parameters()}
        with _NewTensors(known) as mode:
            _step(model, opt, balancer, inputs, targets)
        if name == "dense":
            assert mode.largest >= 2 * ROWS * 4, mode.where  # the dense gradient of the table
        else:
            assert mode.largest < 20_000, f"{table_optimizer}: {mode.largest} values from {mode.where}"
    assert sparse_weights(model) == []  # the dense run left the table in dense mode
