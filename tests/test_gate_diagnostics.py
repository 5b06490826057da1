"""Gate diagnostics: statistics, CSV, heatmap and the training callback."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.batch import EncodedTable
from mtlkit.diagnostics import GateDiagnostics, gate_statistics, plot_gate_heatmap, write_gate_csv
from mtlkit.models import MultiTaskModel
from mtlkit.models.mmoe import MMoE
from mtlkit.models.ple import PLE
from mtlkit.models.shared_bottom import SharedBottom
from mtlkit.nn import TabularEncoder
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec

TASKS = [Task(name="a", kind="binary"), Task(name="b", kind="regression")]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



def table(n: int = 200, seed: int = 0) -> EncodedTable:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    x[:, 0] = 1.0  # a constant column lets a test pin a gate regardless of the row
    ones = torch.ones(n, dtype=torch.bool)
    return EncodedTable({"numeric": x}, {"a": (x[:, 1] > 0).float(), "b": x[:, 1] - x[:, 2]}, {"a": ones, "b": ones})


def model_with(backbone) -> MultiTaskModel:
    return MultiTaskModel(TabularEncoder([], numeric_dim=3, embedding_dim=2), backbone, TASKS)


def mmoe(experts: int = 4) -> MultiTaskModel:
    torch.manual_seed(0)
    return model_with(MMoE(3, ["a", "b"], MMoE.Options(experts=experts, expert_hidden=[6])))


def test_uniform_and_collapsed_gates():
    model = mmoe()
    with torch.no_grad():
        weight = model.backbone.gates.linear.weight  # (gates, in, experts)
        weight.zero_()  # gate a and b: uniform over the 4 experts
        weight[0, 0, 0] = 30.0  # gate a: the constant column routes everything to expert 0
    stats = gate_statistics(model, table())
    a, b = stats["a"], stats["b"]
    assert b.mean_weight == pytest.approx([0.25] * 4, abs=1e-6)
    assert b.mean_entropy == pytest.approx(math.log(4), abs=1e-6) and b.collapsed_share == 0.0
    assert a.mean_weight[0] == pytest.approx(1.0, abs=1e-6) and a.mean_entropy < 1e-6
    assert a.collapsed_share == 0.75 and a.collapsed == ["expert1", "expert2", "expert3"]


def test_statistics_are_evaluation_mode_and_restore_training_mode():
    model = model_with(MMoE(3, ["a", "b"], MMoE.Options(experts=3, expert_hidden=[4], gate_dropout=0.5)))
    model.train()
    first, second = gate_statistics(model, table()), gate_statistics(model, table())
    assert model.training
    assert first["a"].mean_weight == second["a"].mean_weight  # no dropout noise


def test_batches_and_max_rows():
    model, data = mmoe(), table(300)
    whole = gate_statistics(model, data, batch_size=1000)
    batched = gate_statistics(model, data, batch_size=7)
    assert batched["a"].mean_weight == pytest.approx(whole["a"].mean_weight, abs=1e-9)
    assert batched["a"].mean_entropy == pytest.approx(whole["a"].mean_entropy, abs=1e-9)
    head = gate_statistics(model, data, max_rows=50)
    direct = gate_statistics(model, data.subset(torch.arange(50)))
    assert head["b"].mean_weight == pytest.approx(direct["b"].mean_weight, abs=1e-12)
    assert head["b"].mean_weight != pytest.approx(whole["b"].mean_weight, abs=1e-9)


def test_ple_gates_carry_their_expert_labels():
    torch.manual_seed(0)
    model = model_with(PLE(3, ["a", "b"], PLE.Options(levels=2, experts_per_task=2, shared_experts=1, expert_hidden=[4])))
    stats = gate_statistics(model, table())
    assert list(stats) == ["level1/a", "level1/b", "level1/shared", "level2/a", "level2/b"]
    assert stats["level2/b"].experts == ["b/0", "b/1", "shared/0"]
    assert stats["level1/shared"].experts == ["a/0", "a/1", "b/0", "b/1", "shared/0"]
    for s in stats.values():
        assert sum(s.mean_weight) == pytest.approx(1.0, abs=1e-6)
        assert 0 <= s.mean_entropy <= math.log(len(s.experts)) + 1e-9


def test_models_without_gates_are_rejected():
    model = model_with(SharedBottom(3, ["a", "b"], SharedBottom.Options(hidden=[4])))
    with pytest.raises(TypeError, match="MultiTaskModel has no gates"):
        gate_statistics(model, table())
    with pytest.raises(TypeError, match="need a TrainableModel, got Linear"):
        gate_statistics(torch.nn.Linear(3, 1), table())
    with pytest.raises(TypeError, match="no gates"):
        GateDiagnostics(model)


def test_csv_and_heatmap(tmp_path):
    torch.manual_seed(0)
    model = model_with(PLE(3, ["a", "b"], PLE.Options(levels=2, expert_hidden=[4])))
    stats = gate_statistics(model, table())
    with open(write_gate_csv(stats, tmp_path / "gates.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(s.experts) for s in stats.values())
    row = next(r for r in rows if r["gate"] == "level1/shared" and r["expert"] == "b/0")
    assert float(row["mean_weight"]) == pytest.approx(stats["level1/shared"].mean_weight[1], rel=1e-5)
    assert float(row["gate_mean_entropy"]) == pytest.approx(stats["level1/shared"].mean_entropy, rel=1e-5)
    png = plot_gate_heatmap(stats, tmp_path / "gates.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 2000


def test_callback_logs_every_epoch_and_writes_files(tmp_path):
    model = mmoe()
    data = table(256)
    callback = GateDiagnostics(model, max_rows=100)
    trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(), TASKS),
                      TrainSpec(epochs=2, batch_size=64, lr=1e-2, progress=False, patience=None),
                      run_dir=tmp_path, callbacks=[callback])
    result = trainer.fit(data.batches(64, shuffle=True), data)
    for record in result.history:
        assert 0 < record["gates/a/entropy"] <= math.log(4) and 0 <= record["gates/b/collapsed"] <= 1
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["gates/b/entropy"] == result.history[-1]["gates/b/entropy"]
    with open(tmp_path / "gates.csv") as f:
        assert {r["gate"] for r in csv.DictReader(f)} == {"a", "b"}
    assert (tmp_path / "gates.png").read_bytes().startswith(PNG_MAGIC)
    # Written for the final (best) weights: equal to statistics computed afresh.
    assert callback.last["a"].mean_weight == gate_statistics(model, data, max_rows=100)["a"].mean_weight


def test_callback_without_run_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, data = mmoe(), table(64)
    trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(), TASKS),
                      TrainSpec(epochs=1, batch_size=32, progress=False, patience=None), callbacks=[GateDiagnostics()])
    result = trainer.fit(data.batches(32), data)
    assert "gates/a/entropy" in result.history[0] and list(tmp_path.iterdir()) == []
