import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.config import RunConfig
from mtlkit.data.schema import CategoricalFeature, SchemaSpec, SequenceFeature
from mtlkit.errors import ConfigError
from mtlkit.models import ModelSpec, build_model
from mtlkit.models.auxiliary import SequenceObjectiveSpec
from mtlkit.nn import SequenceObjective
from mtlkit.nn.sequence_objectives import sampled_softmax_loss
from mtlkit.run import train_run
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec

CLICK = [Task(name="click", kind="binary")]
OBJECTIVES = ["next_item", "masked_item", "replaced_item"]


def _table(n: int = 400, seed: int = 0, vocab: int = 30) -> pa.Table:
    rng = np.random.default_rng(seed)
    start, length = rng.integers(0, vocab, n), rng.integers(2, 7, n)
    hist = ["|".join(str((s + k) % vocab) for k in range(m)) for s, m in zip(start, length)]  # item k is followed by k + 1
    return pa.table({"item": rng.integers(0, vocab, n), "tags": hist, "hist": hist, "click": rng.integers(0, 2, n)})


def _schema() -> SchemaSpec:
    return SchemaSpec(categorical=[CategoricalFeature(name="item")], sequences=[
        SequenceFeature(name="hist", max_len=6, separator="|", share_vocabulary_with="item"),
        SequenceFeature(name="tags", max_len=6, separator="|")])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_padding_never_enters(objective):
    torch.manual_seed(0)
    head = SequenceObjective(8, max_len=5, objective=objective, negatives=16, mask_rate=0.5)
    table = torch.nn.Embedding(40, 8)
    ids = torch.tensor([[3, 4, 5, 0, 0], [7, 0, 9, 10, 0], [0, 0, 0, 0, 0]])
    torch.manual_seed(1)
    loss = head(ids, table, 40)
    with torch.no_grad():
        table.weight[0] = float("nan")  # the padding row's content cannot reach the loss
    torch.manual_seed(1)
    again = head(ids, table, 40)
    assert torch.isfinite(loss) and torch.equal(loss, again)
    again.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_next_item_is_causal_and_masked_item_is_bidirectional():
    torch.manual_seed(0)
    valid = torch.ones(1, 4, dtype=torch.bool)
    x = torch.randn(1, 4, 8)
    later = x.clone()
    later[0, 3] += 1.0
    causal = SequenceObjective(8, 4, "next_item").eval()
    assert torch.allclose(causal._encode(x, valid)[0, :3], causal._encode(later, valid)[0, :3], atol=1e-6)
    both = SequenceObjective(8, 4, "masked_item").eval()
    assert not torch.allclose(both._encode(x, valid)[0, 0], both._encode(later, valid)[0, 0])


def test_sampled_softmax_is_cross_entropy_over_the_true_item_and_the_draws_without_accidental_hits():
    table = torch.nn.Embedding(4, 2)
    with torch.no_grad():
        table.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    states = torch.tensor([[2.0, 1.0]])
    torch.manual_seed(0)
    loss = sampled_softmax_loss(states, torch.tensor([1]), table, 4, negatives=50)
    torch.manual_seed(0)
    drawn = torch.randint(1, 4, (50,))
    logits = [2.0] + [float(states[0] @ table.weight[i].detach()) for i in drawn.tolist() if i != 1]  # draws of item 1 are masked
    expected = -(logits[0] - math.log(sum(math.exp(v) for v in logits)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert sampled_softmax_loss(states[:0], torch.tensor([], dtype=torch.long), table, 4, 5).item() == 0.0


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_learns_what_a_sequence_makes_predictable(objective):
    torch.manual_seed(0)
    table, head = torch.nn.Embedding(31, 16), SequenceObjective(16, 6, objective, negatives=20, mask_rate=0.3, heads=2)
    optimizer = torch.optim.Adam([*table.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(200):
        start = torch.randint(1, 31, (64, 1))
        # next item: the successor of each item; masked / replaced: a re-watched item, whose copies tell the masked one
        ids = (start + torch.arange(6) - 1) % 30 + 1 if objective == "next_item" else start.expand(64, 6).clone()
        loss = head(ids, table, 31)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    chance = math.log(21) if objective != "replaced_item" else -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert np.mean(losses[-20:]) < 0.4 * chance, (objective, losses[::20])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_balancer_sees_each_objective_as_a_task(objective):
    fitted = _schema().fit(_table())
    spec = ModelSpec(embedding_dim=8, sequence_objectives=[SequenceObjectiveSpec(sequence="hist", objective=objective, weight=0.5)])
    model = build_model(spec, fitted, CLICK)
    name = f"{objective}:hist"
    assert model.loss_task_names == ["click", name] and [(t.name, t.loss_weight) for t in model.auxiliary_tasks()] == [(name, 0.5)]
    balancer = build_balancer(BalancerSpec(name="uncertainty"), [*CLICK, *model.auxiliary_tasks()])
    trainer = Trainer(model, CLICK, balancer, TrainSpec(epochs=1, batch_size=64, progress=False))
    result = trainer.fit(fitted.encode(_table(), CLICK).batches(64, shuffle=True), fitted.encode(_table(100, 1), CLICK))
    assert math.isfinite(result.history[-1][f"train/{name}/loss"]) and balancer.task_names == ["click", name]
    model.train()
    model(fitted.encode(_table(1), CLICK).inputs)  # a batch of one
    assert set(model.auxiliary_losses()) == {name} and model.auxiliary_losses() == {}  # read once


def test_config_errors_name_the_key_before_anything_is_written(tmp_path):
    def config(**objective):
        return RunConfig.model_validate({
            "tasks": [t.model_dump() for t in CLICK], "features": _schema().model_dump(),
            "model": {"embedding_dim": 8, "sequence_objectives": [{"sequence": "hist", **objective}]},
            "train": {"epochs": 1, "progress": False}})

    cases = {
        "model.sequence_objectives[0].sequence: 'tags' does not share the item vocabulary": {"sequence": "tags"},
        "model.sequence_objectives[0].sequence: 'nope' is not a features.sequences field": {"sequence": "nope"},
        "model.sequence_objectives[0].heads: 3 does not divide model.embedding_dim=8": {"heads": 3},
        "model.sequence_objectives[0].name: 'click' is already a task name": {"name": "click"},
    }
    for i, (message, objective) in enumerate(cases.items()):
        out = tmp_path / f"run{i}"
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            train_run(config(**objective), out, tables={"train": _table(), "validation": _table(50, 1)})
        assert not out.exists()
    with pytest.raises(ValidationError, match="objective"):
        SequenceObjectiveSpec(sequence="hist", objective="next_token")
    with pytest.raises(ValidationError, match="mask_rate"):
        SequenceObjectiveSpec(sequence="hist", mask_rate=1.0)


def test_a_run_logs_the_auxiliary_losses_and_its_model_reloads(tmp_path):
    cfg = RunConfig.model_validate({
        "tasks": [t.model_dump() for t in CLICK], "features": _schema().model_dump(),
        "model": {"embedding_dim": 8, "sequence_objectives": [{"sequence": "hist", "objective": "next_item"},
                                                               {"sequence": "hist", "objective": "replaced_item"}]},
        "balancer": {"name": "pcgrad"}, "train": {"epochs": 1, "progress": False}})
    summary = train_run(cfg, tmp_path / "run", tables={"train": _table(), "validation": _table(50, 1)})
    assert set(summary["validation"]) == {"click"}  # auxiliary tasks have no validation metric
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train/next_item:hist/loss"]) and math.isfinite(record["train/replaced_item:hist/loss"])
    from mtlkit.run import load_run
    assert load_run(tmp_path / "run").model.loss_task_names == ["click", "next_item:hist", "replaced_item:hist"]


def test_single_task_baselines_keep_their_own_auxiliary_tasks():
    fitted = SchemaSpec(categorical=[CategoricalFeature(name="item")], sequences=[SequenceFeature(
        name="hist", max_len=6, separator="|", share_vocabulary_with="item", pooling="dien", target="item")]).fit(_table())
    tasks = [*CLICK, Task(name="like", kind="binary")]
    spec = ModelSpec(backbone="single_task", embedding_dim=8, sequence_objectives=[SequenceObjectiveSpec(sequence="hist")])
    model = build_model(spec, fitted, tasks)
    assert model.loss_task_names == ["click", "like", "click/dien:hist", "click/next_item:hist", "like/dien:hist", "like/next_item:hist"]
    model.train()
    model(fitted.encode(_table(4), [], with_targets=False).inputs)
    assert sorted(model.auxiliary_losses()) == sorted(model.loss_task_names[2:])
