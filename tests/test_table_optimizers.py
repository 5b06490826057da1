"""Embedding-table optimisers (mtlkit.optim): against dense references, untouched rows, resume,
duplicate ids, per-field row ranges, the config spec and sparse-aware clipping."""

from __future__ import annotations

import io

import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

from mtlkit.data.schema import SchemaSpec
from mtlkit.errors import ConfigError
from mtlkit.nn import TabularEncoder
from mtlkit.optim import (
    TABLE_OPTIMIZERS,
    EmbeddingOptimizerSpec,
    LazyAdam,
    RowSGD,
    RowWiseAdagrad,
    build_optimizers,
    check_fields,
    clip_grad_norm_,
    grad_norm,
    table_field_names,
)

ROWS, DIM = 50, 4


def _batches(steps: int, seed: int = 0, batch: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, upstream gradient) per step; ids drawn from the first 30 rows, so rows 30.. are never touched,
    and with repeats (duplicate ids inside a batch)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 30, (batch,), generator=g), torch.randn(batch, DIM, generator=g)) for _ in range(steps)]


def _sparse_step(weight: torch.nn.Parameter, ids: torch.Tensor, upstream: torch.Tensor) -> None:
    weight.grad = None
    (F.embedding(ids, weight, sparse=True) * upstream).sum().backward()


def _init(seed: int = 1) -> torch.Tensor:
    return torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(seed))


def test_rowwise_adagrad_matches_a_per_row_loop():
    lr, eps = 0.1, 1e-8
    weight = torch.nn.Parameter(_init())
    opt = RowWiseAdagrad([weight], lr=lr, eps=eps)
    ref_w, ref_g = _init().double(), torch.zeros(ROWS, dtype=torch.float64)
    for ids, upstream in _batches(6):
        _sparse_step(weight, ids, upstream)
        opt.step()
        grads: dict[int, torch.Tensor] = {}
        for i, row in zip(ids.tolist(), upstream.double()):  # the reference sums duplicates itself
            grads[i] = grads.get(i, torch.zeros(DIM, dtype=torch.float64)) + row
        for i, g in grads.items():
            ref_g[i] += (g ** 2).mean()
            ref_w[i] -= lr * g / (ref_g[i].sqrt() + eps)
    torch.testing.assert_close(weight.data.double(), ref_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[weight]["sum"].double(), ref_g, rtol=1e-6, atol=1e-7)


def test_lazy_adam_is_bit_identical_to_torch_sparse_adam():
    ours, theirs = torch.nn.Parameter(_init()), torch.nn.Parameter(_init())
    opt, ref = LazyAdam([ours], lr=0.01, betas=(0.8, 0.99), eps=1e-6), torch.optim.SparseAdam([theirs], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for ids, upstream in _batches(8):
        for w, o in ((ours, opt), (theirs, ref)):
            _sparse_step(w, ids, upstream)
            o.step()
    assert torch.equal(ours.data, theirs.data)
    assert torch.equal(opt.state[ours]["exp_avg_sq"], ref.state[theirs]["exp_avg_sq"])


def test_row_sgd_matches_torch_sgd_on_sparse_gradients():
    ours, theirs = torch.nn.Parameter(_init()), torch.nn.Parameter(_init())
    opt, ref = RowSGD([ours], lr=0.3), torch.optim.SGD([theirs], lr=0.3)
    for ids, upstream in _batches(5):
        for w, o in ((ours, opt), (theirs, ref)):
            _sparse_step(w, ids, upstream)
            o.step()
    torch.testing.assert_close(ours.data, theirs.data, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["rowwise_adagrad", "lazy_adam", "sgd"])
def test_untouched_rows_and_their_state_stay_bit_identical(name):
    weight = torch.nn.Parameter(_init())
    before = weight.data.clone()
    opt = TABLE_OPTIMIZERS.get(name)([weight], lr=0.05, weight_decay=0.1) if name != "lazy_adam" else LazyAdam([weight], lr=0.05)
    touched = torch.zeros(ROWS, dtype=torch.bool)
    for ids, upstream in _batches(5):
        _sparse_step(weight, ids, upstream)
        opt.step()
        touched[ids] = True
    assert touched[:30].any() and not touched[30:].any()
    assert torch.equal(weight.data[~touched], before[~touched])
    assert not torch.equal(weight.data[touched], before[touched])
    for value in opt.state[weight].values():
        if isinstance(value, torch.Tensor):
            assert not value[~touched].any()  # state rows of untouched ids never written (still 0)


@pytest.mark.parametrize("name", ["rowwise_adagrad", "lazy_adam", "sgd"])
def test_duplicate_ids_are_coalesced_before_the_update(name):
    """A batch with id 3 twice updates like one occurrence carrying the summed gradient (the
    non-linear updates would differ if the two rows were applied one after the other)."""
    a, b = torch.nn.Parameter(_init()), torch.nn.Parameter(_init())
    opt_a, opt_b = TABLE_OPTIMIZERS.get(name)([a], lr=0.1), TABLE_OPTIMIZERS.get(name)([b], lr=0.1)
    g1, g2 = torch.randn(DIM), torch.randn(DIM)
    a.grad = torch.sparse_coo_tensor([[3, 3, 5]], torch.stack([g1, g2, g1]), a.shape, check_invariants=True)
    b.grad = torch.sparse_coo_tensor([[3, 5]], torch.stack([g1 + g2, g1]), b.shape, check_invariants=True)
    opt_a.step()
    opt_b.step()
    assert torch.equal(a.data, b.data)


@pytest.mark.parametrize("name", ["rowwise_adagrad", "lazy_adam", "sgd"])
def test_state_dict_round_trip_continues_bit_identically(name):
    batches = _batches(8, seed=3)

    def run(weight, opt, part):
        for ids, upstream in part:
            _sparse_step(weight, ids, upstream)
            opt.step()

    full = torch.nn.Parameter(_init())
    opt = TABLE_OPTIMIZERS.get(name)([full], lr=0.05)
    run(full, opt, batches)

    first = torch.nn.Parameter(_init())
    opt1 = TABLE_OPTIMIZERS.get(name)([first], lr=0.05)
    run(first, opt1, batches[:3])
    buffer = io.BytesIO()
    torch.save({"w": first.data, "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as the trainer loads checkpoints
    resumed = torch.nn.Parameter(saved["w"].clone())
    opt2 = TABLE_OPTIMIZERS.get(name)([resumed], lr=0.05)
    opt2.load_state_dict(saved["opt"])
    run(resumed, opt2, batches[3:])
    assert torch.equal(resumed.data, full.data)


def test_a_dense_gradient_counts_as_every_row_touched():
    sparse, dense = torch.nn.Parameter(_init()), torch.nn.Parameter(_init())
    opt_s, opt_d = RowWiseAdagrad([sparse], lr=0.1), RowWiseAdagrad([dense], lr=0.1)
    for ids, upstream in _batches(3):
        _sparse_step(sparse, ids, upstream)
        dense.grad = sparse.grad.to_dense()  # zero rows: G and w unchanged there
        opt_s.step()
        opt_d.step()
    torch.testing.assert_close(sparse.data, dense.data, rtol=0, atol=1e-7)


def test_row_ranges_split_one_weight_between_optimisers():
    """Two optimisers owning rows [0, 20) and [20, 50) of one weight: the first range trains as one
    optimiser over the whole weight would (same settings), the second at its own rate."""
    whole, split = torch.nn.Parameter(_init()), torch.nn.Parameter(_init())
    ref = RowWiseAdagrad([whole], lr=0.1)
    low, high = RowWiseAdagrad([split], rows=(0, 20), lr=0.1), RowSGD([split], rows=(20, 50), lr=0.2)
    sgd_ref = _init()
    for ids, upstream in _batches(4):
        _sparse_step(whole, ids, upstream)
        ref.step()
        _sparse_step(split, ids, upstream)
        grad = split.grad.coalesce().to_dense()
        sgd_ref[20:] -= 0.2 * grad[20:]
        low.step()
        high.step()
    assert torch.equal(split.data[:20], whole.data[:20])
    torch.testing.assert_close(split.data[20:], sgd_ref[20:], rtol=0, atol=1e-6)
    assert low.state[split]["sum"].shape == (20,)  # state only for the rows it owns


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = TabularEncoder([1000, 5, 3], numeric_dim=2, embedding_dim=4)
        self.head = torch.nn.Linear(self.encoder.output_dim, 1)

    @property
    def embedding(self):
        return self.encoder.embedding

    def forward(self, inputs):
        return self.head(self.encoder(inputs))


def _encoder() -> _Net:
    return _Net()


def _encoder_step(net: _Net, opt) -> None:
    ids = torch.tensor([[1, 2, 0], [999, 4, 2], [1, 0, 1]])
    out = net({"categorical": ids, "numeric": torch.ones(3, 2)})
    opt.zero_grad()
    (out ** 2).sum().backward()
    opt.step()


def test_build_optimizers_routes_tables_to_row_optimisers_per_field():
    encoder = _encoder()
    spec = EmbeddingOptimizerSpec(name="rowwise_adagrad", lr=0.1, per_field={"c": {"name": "sgd", "lr": 0.5}, "b": {"lr": 0.3}})
    opt = build_optimizers(encoder, spec, lr=1e-3, field_names=["a", "b", "c"])
    assert [(type(o).__name__, o.param_groups[0]["rows"], o.param_groups[0]["lr"]) for o in opt.tables] == [
        ("RowWiseAdagrad", (0, 1000), 0.1), ("RowWiseAdagrad", (1000, 1005), 0.3), ("RowSGD", (1005, 1008), 0.5)]
    weight = encoder.embedding.table.weight
    assert opt.table_parameters == [weight] and all(p is not weight for p in opt.dense_parameters)
    before = weight.data.clone()
    _encoder_step(encoder, opt)
    assert encoder.embedding.sparse_gradients
    changed = (weight.data != before).any(1).nonzero().flatten().tolist()
    assert changed == [1, 999, 1000, 1002, 1004, 1005, 1006, 1007]  # field offsets 0, 1000, 1005


def test_build_optimizers_dense_keeps_todays_behaviour():
    encoder = _encoder()
    opt = build_optimizers(encoder, EmbeddingOptimizerSpec(name="dense"), lr=1e-2)
    weight = encoder.embedding.table.weight
    assert opt.tables == [] and any(p is weight for p in opt.dense_parameters)
    _encoder_step(encoder, opt)
    assert not encoder.embedding.sparse_gradients and not weight.grad.is_sparse
    assert torch.count_nonzero(opt.dense.state[weight]["exp_avg"]) > 0  # dense Adam moments of the table


def test_optimizer_set_state_dict_round_trip():
    def fresh():
        encoder = _encoder()
        return encoder, build_optimizers(encoder, EmbeddingOptimizerSpec(name="lazy_adam"), lr=1e-2)

    a, opt_a = fresh()
    for _ in range(4):
        _encoder_step(a, opt_a)
    b, opt_b = fresh()
    for _ in range(2):
        _encoder_step(b, opt_b)
    buffer = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    c, opt_c = fresh()
    c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    for _ in range(2):
        _encoder_step(c, opt_c)
    for (name, x), y in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(x, y), name
    with pytest.raises(ConfigError, match="embedding-table optimizer state"):
        opt_c.load_state_dict(saved["opt"]["dense"])  # a dense-only checkpoint cannot resume table optimisers


def test_spec_rejects_bad_names_options_and_fields():
    with pytest.raises(ValidationError, match="unknown embedding optimizer 'adagrad'; choose one of: auto, lazy_adam, rowwise_adagrad, sgd, dense"):
        EmbeddingOptimizerSpec(name="adagrad")
    with pytest.raises(ValidationError, match="per_field.user_id.name: unknown embedding optimizer 'ftrl'"):
        EmbeddingOptimizerSpec(per_field={"user_id": {"name": "ftrl"}})
    with pytest.raises(ValidationError, match="options.betas"):
        EmbeddingOptimizerSpec(options={"betas": [0.9]}, name="lazy_adam")
    with pytest.raises(ValidationError, match="per_field.user_id.options.momentum: Extra inputs are not permitted"):
        EmbeddingOptimizerSpec(per_field={"user_id": {"options": {"momentum": 0.9}}})
    with pytest.raises(ValidationError, match="name 'dense'"):
        EmbeddingOptimizerSpec(name="dense", per_field={"user_id": {"lr": 0.1}})
    spec = EmbeddingOptimizerSpec(per_field={"price": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=r"^model.embedding_optimizer.per_field.price: not a categorical feature \(categorical: user_id, item_id\)$"):
        check_fields(spec, ["user_id", "item_id"])


def test_clip_grad_norm_matches_torch_on_the_densified_gradients():
    table, bias = torch.nn.Parameter(_init()), torch.nn.Parameter(torch.zeros(3))
    ids, upstream = _batches(1)[0]
    (F.embedding(ids, table, sparse=True) * upstream).sum().backward()
    bias.grad = torch.tensor([1.0, -2.0, 0.5])
    dense_table, dense_bias = table.grad.to_dense(), bias.grad.clone()
    ref = [torch.nn.Parameter(torch.zeros(ROWS, DIM)), torch.nn.Parameter(torch.zeros(3))]
    ref[0].grad, ref[1].grad = dense_table.clone(), dense_bias.clone()
    expected = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    torch.testing.assert_close(grad_norm([table, bias]), expected)
    total = clip_grad_norm_([table, bias], 0.5)
    torch.testing.assert_close(total, expected)
    assert table.grad.is_sparse and table.grad.is_coalesced()
    torch.testing.assert_close(table.grad.to_dense(), ref[0].grad)
    torch.testing.assert_close(bias.grad, ref[1].grad)


def test_field_names_come_from_the_schema_spec_before_fitting():
    """per_field keys can be checked against the config's features before any data is read: the
    table's fields are the categoricals, then the sequences with a vocabulary of their own."""
    features = SchemaSpec.model_validate({
        "categorical": [{"name": "user_id"}, {"name": "item_id"}], "numeric": [{"name": "price"}],
        "sequences": [{"name": "hist", "max_len": 3, "share_vocabulary_with": "item_id"}, {"name": "tags", "max_len": 2}]})
    assert table_field_names(features) == ["user_id", "item_id", "tags"]
    check_fields(EmbeddingOptimizerSpec(per_field={"tags": {"lr": 0.1}}), table_field_names(features))
    with pytest.raises(ConfigError, match="per_field.hist: not a categorical feature"):
        check_fields(EmbeddingOptimizerSpec(per_field={"hist": {"lr": 0.1}}), table_field_names(features))
