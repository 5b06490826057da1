"""Embedding tables stored in bfloat16 (``model.embedding_storage``; issue 14, item 3's option).

What could go wrong and is checked: small updates vanishing under round-to-nearest (stochastic
rounding must keep them on average); a bf16 table drifting away from the fp32 one under the same
gradients; lookups leaking bf16 into the model; a resumed run rounding differently from the
uninterrupted one; balancers, export and serving on bf16 tables; a config that would train bf16
tables with a dense optimiser.
"""

from __future__ import annotations

import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.batch import EncodedTable
from mtlkit.errors import ConfigError
from mtlkit.models import ModelSpec, build_model
from mtlkit.optim import EmbeddingOptimizerSpec, LazyAdam, RowSGD, RowWiseAdagrad
from mtlkit.optim.rounding import add_to_rows, stochastic_round
from mtlkit.run import train_run
from mtlkit.train import Trainer, TrainSpec
from test_sparse_runs import _config
from test_sparse_tables import TASKS, _batch, _losses, _schema

from conftest import InterruptAfter, click_table


def test_small_updates_survive_stochastic_rounding_and_vanish_without_it():
    ids = torch.arange(64)
    rounded = torch.ones(64, 8, dtype=torch.bfloat16)
    nearest = torch.ones(64, 8, dtype=torch.bfloat16)
    for step in range(1000):  # 1000 steps of +1e-4: each under half of bf16's spacing at 1.0 (2⁻⁸ ≈ 0.0039)
        add_to_rows(rounded, ids, torch.full((64, 8), 1e-4), step)
        nearest.index_add_(0, ids, torch.full((64, 8), 1e-4, dtype=torch.bfloat16))
    assert torch.equal(nearest, torch.ones_like(nearest))  # round-to-nearest lost every step
    assert abs(rounded.float().mean().item() - 1.1) < 0.005  # 1 + 1000·1e-4, on average over 512 values


def test_stochastic_rounding_is_unbiased_exact_on_bf16_values_and_a_function_of_the_step():
    x = torch.randn(256, 16)
    ids = torch.arange(256)
    draws = torch.stack([stochastic_round(x, ids, step).float() for step in range(400)])
    assert (draws.mean(0) - x).abs().max() < 0.02 * x.abs().max()
    bits = x.view(torch.int32) & -65536  # x's bf16 neighbours: cut toward zero, and one step further out
    toward_zero, away = bits.view(torch.float32), (bits + 65536).view(torch.float32)
    assert torch.all((draws == toward_zero) | (draws == away))
    exact = x.to(torch.bfloat16)
    assert torch.equal(stochastic_round(exact.float(), ids, 3), exact)  # a bf16 value is kept as is
    assert torch.equal(stochastic_round(x, ids, 9), stochastic_round(x, ids, 9))
    assert not torch.equal(stochastic_round(x, ids, 9), stochastic_round(x, ids, 10))


def test_duplicate_ids_of_a_bf16_gradient_are_summed_in_fp32():
    from mtlkit.optim.base import coalesce

    values = torch.full((1000, 4), 0.01, dtype=torch.bfloat16)  # one popular id, 1000 lookups in a batch
    grad = torch.sparse_coo_tensor(torch.full((1, 1000), 3), values, (10, 4), check_invariants=True)
    summed = coalesce(grad)
    exact = 1000 * values[0, 0].item()
    assert summed.dtype == torch.bfloat16 and summed.indices().tolist() == [[3]]
    assert abs(summed.values()[0, 0].item() - exact) <= exact * 2**-8  # one rounding; a bf16 running sum stalls near 2
    running = torch.zeros((), dtype=torch.bfloat16)
    for v in values[:, 0]:
        running += v
    assert running.item() < exact / 2


@pytest.mark.parametrize("optimizer", [RowWiseAdagrad, LazyAdam, RowSGD])
def test_a_bf16_table_follows_the_fp32_table_under_the_same_gradients(optimizer):
    torch.manual_seed(0)
    start = torch.randn(300, 8) * 0.05
    full = torch.nn.Parameter(start.clone())
    half = torch.nn.Parameter(start.to(torch.bfloat16))
    lr = {RowWiseAdagrad: 0.05, LazyAdam: 0.01, RowSGD: 0.1}[optimizer]
    opts = [optimizer([full], lr=lr), optimizer([half], lr=lr)]
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        ids = torch.randint(0, 300, (64,), generator=g)
        rows = torch.randn(64, 8, generator=g) * 0.1
        for p, opt in zip((full, half), opts):
            p.grad = torch.sparse_coo_tensor(ids.unsqueeze(0), rows.to(p.dtype), p.shape, check_invariants=True)
            opt.step()
    moved = (full.detach() - start).abs().mean()
    drift = (half.detach().float() - full.detach()).abs().mean()
    assert half.dtype == torch.bfloat16 and moved > 0.01
    assert drift < 0.05 * moved, (float(drift), float(moved))  # within 5% of how far training moved the rows
    if optimizer is LazyAdam:
        assert opts[1].state[half]["exp_avg"].dtype == torch.float32  # the moments stay fp32


def test_bf16_storage_halves_the_table_and_the_model_still_sees_fp32():
    spec = dict(backbone="mmoe", options={"experts": 2, "expert_hidden": [8]}, embedding_dim=4, tower=[4],
                embedding_optimizer={"name": "rowwise_adagrad"})
    full = build_model(ModelSpec(**spec), _schema(60_000), TASKS)
    half = build_model(ModelSpec(**spec, embedding_storage="bfloat16"), _schema(60_000), TASKS)
    weight = half.encoder.embedding.table.weight
    assert weight.dtype == torch.bfloat16 and weight.shape == full.encoder.embedding.table.weight.shape
    assert weight.numel() * weight.element_size() * 2 == full.encoder.embedding.table.weight.numel() * 4
    assert all(p.dtype == torch.float32 for n, p in half.named_parameters() if "embedding" not in n)
    half.encoder.embedding.set_sparse_gradients(True)
    inputs, targets = _batch(rows=1, buckets=60_000)  # batch of one
    out = half(inputs)
    assert all(v.dtype == torch.float32 and v.shape == (1,) for v in out.values())
    sum(_losses(half, inputs, targets).values()).backward()
    assert weight.grad.is_sparse and weight.grad.dtype == torch.bfloat16  # autograd keeps the weight's dtype


@pytest.mark.parametrize(("optimizer", "why"), [({"name": "dense"}, "it is 'dense'"), ({}, "'auto' picks dense Adam")])
def test_bf16_tables_with_a_dense_optimizer_are_a_config_error_before_the_run_directory(tmp_path, optimizer, why):
    tables = {"train": click_table(200, 0), "validation": click_table(100, 1)}
    config = _config(buckets=1_000, embedding_storage="bfloat16", **({"embedding_optimizer": optimizer} if optimizer else {}))
    with pytest.raises(ConfigError) as error:
        train_run(config, tmp_path / "run", tables=tables)
    message = str(error.value)
    assert message.startswith("model.embedding_storage: bfloat16") and why in message and "\n" not in message
    assert not (tmp_path / "run").exists()


def test_auto_is_judged_on_all_the_tables_of_a_model_of_independent_tasks():
    from mtlkit.optim import build_optimizers

    spec = ModelSpec(backbone="single_task", options={"hidden": [4]}, embedding_dim=2, embedding_storage="bfloat16")
    model = build_model(spec, _schema(15_000), TASKS)  # two models of 30,006 rows: 60,012 in all, over auto's 50,000
    tables = build_optimizers(model, spec.embedding_optimizer, lr=1e-3).tables
    trained = {id(p) for o in tables for g in o.param_groups for p in g["params"]}
    assert {type(o).__name__ for o in tables} == {"RowWiseAdagrad"}
    assert trained == {id(m.encoder.embedding.table.weight) for m in model.per_task.values()}
    with pytest.raises(ConfigError, match="these have 40,012"):
        build_model(spec, _schema(10_000), TASKS)


def test_unknown_storage_names_the_key():
    with pytest.raises(ValueError, match="embedding_storage"):
        ModelSpec(embedding_storage="float16")


def test_bf16_tables_learn_as_well_as_fp32_ones_and_export(tmp_path):
    from mtlkit.export import ExportedModel, export_run
    from mtlkit.run import load_run, predict_table

    tables = {"train": click_table(3000, 0), "validation": click_table(1000, 1)}
    auc: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for storage in auc:
        for seed in range(3):  # single runs of this size differ by ±0.02 between seeds
            config = _config(embedding_storage=storage, embedding_optimizer={"name": "rowwise_adagrad", "lr": 0.05})
            summary = train_run(config.model_copy(update={"seed": seed}), tmp_path / f"{storage}-{seed}", tables=tables)
            auc[storage].append(summary["validation"]["click"]["auc"])
    full, half = (sum(v) / len(v) for v in auc.values())
    assert half > 0.75 and abs(half - full) < 0.02, auc  # a constant scores 0.5; fp32 reaches ~0.80
    saved = torch.load(tmp_path / "bfloat16-0" / "last.pt", weights_only=False)["model"]
    assert saved["encoder.embedding.table.weight"].dtype == torch.bfloat16  # the checkpoint keeps half the bytes

    rows = click_table(50, 2)
    reference = predict_table(load_run(tmp_path / "bfloat16-0"), rows)
    for fmt in ("torchscript", "onnx"):
        result = export_run(tmp_path / "bfloat16-0", format=fmt)  # verified against PyTorch before it is written
        assert result.manifest["verification"]["checked"]
        served = ExportedModel(result.directory).predict_table(rows)
        for task in ("click", "buy"):
            torch.testing.assert_close(torch.as_tensor(served[task]), torch.as_tensor(reference[task]), rtol=1e-5, atol=1e-6)


def _trainer(run_dir) -> tuple[Trainer, object, EncodedTable]:
    inputs, targets = _batch(rows=200, buckets=60_000, seed=2)
    table = EncodedTable(inputs, targets, {k: torch.ones(200, dtype=torch.bool) for k in targets})
    torch.manual_seed(5)
    model = build_model(ModelSpec(backbone="mmoe", options={"experts": 2, "expert_hidden": [8]}, embedding_dim=4, tower=[4],
                                  embedding_storage="bfloat16"), _schema(60_000), TASKS)
    train = TrainSpec(epochs=3, batch_size=32, lr=0.01, progress=False, patience=None, checkpoint_every=3, precision="fp32")
    trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(name="fixed"), TASKS), train, run_dir,
                      embedding_optimizer=EmbeddingOptimizerSpec(lr=0.05, per_field={"item": {"name": "lazy_adam"}}),
                      table_fields=["user", "item", "device"])
    return trainer, table.batches(32, shuffle=True, seed=3), table


def test_an_interrupted_bf16_run_resumes_bit_identically(tmp_path):
    trainer, batches, valid = _trainer(tmp_path / "whole")
    trainer.fit(batches, valid)
    expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert expected["encoder.embedding.table.weight"].dtype == torch.bfloat16
    trainer, batches, valid = _trainer(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(InterruptAfter(batches, 11), valid)  # mid-epoch 2, after the step-9 checkpoint
    torch.manual_seed(1234)  # the rounding must not depend on the global generator
    trainer, batches, valid = _trainer(tmp_path / "resumed")
    trainer.fit(batches, valid)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("name", ["pcgrad", "mgda"])
def test_gradient_balancers_train_bf16_tables_on_touched_rows(name):
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="mmoe", options={"experts": 2, "expert_hidden": [8]}, embedding_dim=4, tower=[4],
                                  embedding_optimizer={"name": "rowwise_adagrad"}, embedding_storage="bfloat16"),
                        _schema(60_000), TASKS)
    table = model.encoder.embedding.table.weight
    model.encoder.embedding.set_sparse_gradients(True)
    balancer = build_balancer(BalancerSpec(name=name), TASKS)
    inputs, targets = _batch(rows=32, buckets=60_000)
    losses = _losses(model, inputs, targets)
    balancer.backward(losses, model)
    grad = table.grad.coalesce()
    touched = torch.unique(inputs["categorical"] + model.encoder.embedding.offsets)
    assert grad.dtype == torch.bfloat16 and torch.equal(grad.indices()[0], touched)
    assert grad.values().abs().sum() > 0
