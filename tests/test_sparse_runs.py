"""Sparse embedding tables through the trainer and the run (issue 14): ``model.embedding_optimizer``.

The default trains the tables with row-wise AdaGrad on the rows a batch touched; ``name: dense``
keeps the tables in the fused Adam/AdamW of the dense parameters. What could go wrong and is
checked here: rows no training row looks up must not move (a dense optimiser with decoupled
weight decay moves every row of the table); the run must still learn; an interrupted run with a
row-wise AdaGrad table and a lazy-Adam field must resume bit-identically; bad keys stop before
anything is written.
"""

from __future__ import annotations

import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.config import RunConfig, load_config_text
from mtlkit.data.batch import EncodedTable
from mtlkit.errors import ConfigError
from mtlkit.optim import EmbeddingOptimizerSpec, LazyAdam, RowWiseAdagrad
from mtlkit.run import train_run
from mtlkit.train import Callback, Trainer, TrainSpec
from test_sparse_tables import TASKS, _batch, _model

from conftest import InterruptAfter, click_table

BUCKETS = 60_000  # hashed item ids (over `auto`'s 50,000 rows): 30 distinct items touch at most 30 of these rows


def _config(buckets: int = BUCKETS, **model) -> RunConfig:
    return RunConfig.model_validate({
        "seed": 0,
        "features": {"categorical": ["user", {"name": "item", "hash_buckets": buckets}], "numeric": [{"name": "price", "transform": "log1p"}]},
        "tasks": [{"name": "click", "kind": "binary"}, {"name": "buy", "kind": "binary", "mask": {"column": "click", "equals": 1}}],
        "model": {"backbone": "shared_bottom", "options": {"hidden": [8]}, "embedding_dim": 4, "tower": [4], **model},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.01, "optimizer": "adamw", "weight_decay": 0.01, "monitor": "auc",
                  "patience": None, "progress": False, "precision": "fp32"},
    })


class TableAtStart(Callback):
    """The table's weights before the first optimiser step, and the trainer that ran."""

    def on_step_losses(self, trainer, step, losses):
        if step == 0:
            self.trainer = trainer
            self.before = trainer.model.encoder.embedding.table.weight.detach().clone()


def _train(tmp_path, buckets: int = BUCKETS, **model) -> tuple[dict, TableAtStart]:
    probe = TableAtStart()
    tables = {"train": click_table(600, 0), "validation": click_table(300, 1)}
    summary = train_run(_config(buckets, **model), tmp_path / "run", callbacks=[probe], tables=tables)
    return summary, probe


def test_default_tables_move_only_the_rows_training_touched(tmp_path):
    summary, probe = _train(tmp_path)
    trainer = probe.trainer
    assert [type(o) for o in trainer.optimizers.tables] == [RowWiseAdagrad]
    table = trainer.model.encoder.embedding.table.weight
    assert all(table is not p for p in trainer.optimizer.param_groups[0]["params"])  # not in the dense Adam
    moved = (table.detach() != probe.before).any(dim=1)
    # user: 20 values (+ OOV row), item: 30 hashed ids of 20,000 buckets
    assert 20 <= int(moved.sum()) <= 60, int(moved.sum())
    assert summary["validation"]["click"]["auc"] > 0.65  # it learned (a constant scores 0.5)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["optimizer"]
    assert len(state["tables"]) == 1 and state["dense"] is not None


def test_dense_option_keeps_the_tables_in_the_dense_optimizer(tmp_path):
    _, probe = _train(tmp_path, embedding_optimizer={"name": "dense"})
    trainer = probe.trainer
    table = trainer.model.encoder.embedding.table.weight
    assert trainer.optimizers.tables == []
    assert any(table is p for g in trainer.optimizer.param_groups for p in g["params"])
    moved = (table.detach() != probe.before).any(dim=1)
    assert int(moved.sum()) > BUCKETS // 2  # AdamW's decay reaches every row, touched or not


def test_auto_trains_small_tables_dense_and_a_named_optimizer_applies_at_any_size(tmp_path):
    _, probe = _train(tmp_path / "auto", buckets=1_000)  # 1,000 + 21 rows: under auto's 50,000
    assert probe.trainer.optimizers.tables == []
    _, probe = _train(tmp_path / "named", buckets=1_000, embedding_optimizer={"name": "sgd", "lr": 0.1})
    assert [type(o).__name__ for o in probe.trainer.optimizers.tables] == ["RowSGD"]


def _trainer(run_dir, spec: EmbeddingOptimizerSpec) -> tuple[Trainer, object, EncodedTable]:
    inputs, targets = _batch(rows=200, buckets=500, seed=2)
    masks = {k: torch.ones(200, dtype=torch.bool) for k in targets}
    table = EncodedTable(inputs, targets, masks)
    torch.manual_seed(5)
    train = TrainSpec(epochs=3, batch_size=32, lr=0.01, progress=False, patience=None, checkpoint_every=3, precision="fp32")
    trainer = Trainer(_model(buckets=500, sparse=False), TASKS, build_balancer(BalancerSpec(name="pcgrad"), TASKS), train,
                      run_dir, embedding_optimizer=spec, table_fields=["user", "item", "device"])
    return trainer, table.batches(32, shuffle=True, seed=3), table


def test_interrupted_run_with_table_optimizers_resumes_bit_identically(tmp_path):
    spec = EmbeddingOptimizerSpec(lr=0.05, per_field={"item": {"name": "lazy_adam"}})
    trainer, batches, valid = _trainer(tmp_path / "whole", spec)
    assert sorted(type(o).__name__ for o in trainer.optimizers.tables) == ["LazyAdam", "RowWiseAdagrad", "RowWiseAdagrad"]
    trainer.fit(batches, valid)
    expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer, batches, valid = _trainer(tmp_path / "resumed", spec)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(InterruptAfter(batches, 11), valid)  # mid-epoch 2, after the step-9 checkpoint
    torch.manual_seed(1234)
    trainer, batches, valid = _trainer(tmp_path / "resumed", spec)
    trainer.fit(batches, valid)
    assert any(isinstance(o, LazyAdam) and o.state for o in trainer.optimizers.tables)  # state came back
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_unknown_embedding_optimizer_is_a_one_line_config_error():
    text = "features: {categorical: [user]}\ntasks: [{name: click, kind: binary}]\nmodel: {embedding_optimizer: {name: adagrad_v9}}\n"
    with pytest.raises(ConfigError) as error:
        load_config_text(text, "run.yaml")
    message = str(error.value)
    assert "\n" not in message and "model.embedding_optimizer" in message and "adagrad_v9" in message


def test_per_field_option_on_a_numeric_feature_stops_before_the_run_directory(tmp_path):
    tables = {"train": click_table(200, 0), "validation": click_table(100, 1)}
    with pytest.raises(ConfigError, match=r"model\.embedding_optimizer\.per_field\.price: not a categorical feature"):
        train_run(_config(embedding_optimizer={"per_field": {"price": {"lr": 0.1}}}), tmp_path / "run", tables=tables)
    assert not (tmp_path / "run").exists()
