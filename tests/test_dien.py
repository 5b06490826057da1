import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.schema import CategoricalFeature, FittedSchema, SchemaSpec, SequenceFeature
from mtlkit.metrics.functions import auc
from mtlkit.models import ModelSpec, build_model
from mtlkit.nn import DienPooling, TabularEncoder
from mtlkit.nn.dien import GatedRecurrentCell, auxiliary_loss, sample_negatives
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, predict_logits

CLICK = [Task(name="click", kind="binary")]


def dien_spec(**dien) -> SchemaSpec:
    seq = SequenceFeature(name="hist", max_len=6, separator="|", share_vocabulary_with="item", pooling="dien", target="item",
                          dien=dien or None)
    return SchemaSpec(categorical=[CategoricalFeature(name="item")], sequences=[seq])


def test_padding_never_enters_pooling_aux_loss_or_gradients():
    torch.manual_seed(0)
    dien = DienPooling(4)
    history, target = torch.randn(3, 5, 4, requires_grad=True), torch.randn(3, 4)
    negatives = torch.randn(3, 5, 4)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False], [False] * 5])
    pooled, aux = dien(history, target, mask, negatives)
    changed = history.detach().clone()
    changed[~mask] = float("nan")  # even NaN in padded positions cannot leak through
    changed_negatives = negatives.clone()
    changed_negatives[~mask] = 100.0
    pooled2, aux2 = dien(changed, target, mask, changed_negatives)
    assert torch.equal(pooled, pooled2) and torch.equal(aux, aux2)
    assert pooled[2].abs().sum() == 0  # an empty history pools to zero
    (pooled.sum() + aux).backward()
    assert history.grad[~mask].abs().sum() == 0 and torch.isfinite(history.grad).all()


def test_an_interior_unseen_item_is_skipped_like_padding():
    torch.manual_seed(0)
    dien = DienPooling(4)
    a, b, c = torch.randn(3, 4)
    pad = torch.zeros(4)
    target = torch.randn(1, 4)
    gap = dien(torch.stack([a, pad, b, c]).unsqueeze(0), target, torch.tensor([[True, False, True, True]]))[0]
    packed = dien(torch.stack([a, b, c, pad]).unsqueeze(0), target, torch.tensor([[True, True, True, False]]))[0]
    assert torch.allclose(gap, packed, atol=1e-6)


def test_auxiliary_loss_is_eq_1_over_valid_pairs():
    states = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    positives = torch.tensor([[[9.0, 9.0], [2.0, 0.0], [0.0, 3.0]]])
    negatives = torch.tensor([[[9.0, 9.0], [0.0, 1.0], [1.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])  # one valid pair: h_0 against e_1 / ê_1
    expected = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(-0.0))))
    assert auxiliary_loss(states, positives, negatives, mask).item() == pytest.approx(expected)
    assert auxiliary_loss(states, positives, negatives, torch.tensor([[True, False, False]])).item() == 0.0


def test_augru_with_zero_attention_keeps_its_state():
    cell = GatedRecurrentCell(3, 3)
    state = torch.randn(2, 3)
    projected = cell.input(torch.randn(2, 3))
    assert torch.allclose(cell.step(projected, state, torch.zeros(2)), state)
    assert not torch.allclose(cell.step(projected, state, torch.ones(2)), state)


def test_negatives_from_other_histories_fall_back_to_the_vocabulary():
    torch.manual_seed(0)
    ids = torch.tensor([[5, 6, 0], [7, 8, 9]])
    neg = sample_negatives(ids, 50, "histories")
    assert neg[0].tolist()[:2] == [7, 8] and neg[1].tolist()[:2] == [5, 6]  # the other user's items
    assert 1 <= neg[1, 2] < 50  # the other row is padding there: drawn from the vocabulary
    assert ((sample_negatives(ids, 50, "vocabulary") >= 1) & (sample_negatives(ids, 50, "vocabulary") < 50)).all()
    single = sample_negatives(ids[:1], 50, "histories")  # a batch of one has no other user
    assert ((single >= 1) & (single < 50)).all()


def test_config_keys_and_errors():
    assert dien_spec().sequences[0].dien is None
    with pytest.raises(ValidationError, match="target"):
        SequenceFeature(name="h", max_len=3, pooling="dien")
    with pytest.raises(ValidationError, match="`dien` options need pooling dien"):
        SequenceFeature(name="h", max_len=3, dien={"aux_weight": 1.0})
    with pytest.raises(ValidationError, match="negatives"):
        SequenceFeature(name="h", max_len=3, pooling="dien", target="i", dien={"negatives": "random"})
    with pytest.raises(ValidationError, match="aux_weight"):
        SequenceFeature(name="h", max_len=3, pooling="dien", target="i", dien={"aux_weight": -1})


def _table(n: int, seed: int, n_items: int = 40, n_categories: int = 4) -> pa.Table:
    """Clicked iff the candidate's category is the category of the LAST history item (interest drift):
    the history holds several categories, so a pooling that ignores order cannot tell the current one."""
    rng = np.random.default_rng(seed)
    length = rng.integers(2, 7, n)
    hist = rng.integers(0, n_items, (n, 6))
    last = hist[np.arange(n), length - 1]
    same = rng.integers(0, n_items // n_categories, n) * n_categories + last % n_categories
    candidate = np.where(rng.random(n) < 0.5, same, rng.integers(0, n_items, n))
    click = (candidate % n_categories == last % n_categories).astype(np.int64)
    strings = ["|".join(map(str, h[:k])) for h, k in zip(hist, length)]
    return pa.table({"item": candidate, "hist": strings, "click": click})


def _fit(spec: SchemaSpec, train: pa.Table, test: pa.Table, epochs: int = 6) -> tuple[float, Trainer]:
    fitted = spec.fit(train)
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="shared_bottom", embedding_dim=8, options={"hidden": [32]}), fitted, CLICK)
    trainer = Trainer(model, CLICK, build_balancer(BalancerSpec(), [*CLICK, *model.auxiliary_tasks()]),
                      TrainSpec(epochs=epochs, batch_size=64, lr=1e-2, progress=False, patience=None))
    trainer.fit(fitted.encode(train, CLICK).batches(64, shuffle=True), fitted.encode(test, CLICK))
    scores = predict_logits(model, fitted.encode(test, CLICK, with_targets=False), 1024)["click"].numpy()
    return auc(scores, test.column("click").to_numpy()), trainer


def test_dien_learns_the_current_interest_that_din_cannot_see():
    train, test = _table(3000, 0), _table(1000, 1)
    # The auxiliary loss is noise here (the next item is random), so it is off: this is about the AUGRU.
    dien, _ = _fit(dien_spec(aux_weight=0.0), train, test, epochs=15)
    din, _ = _fit(SchemaSpec(categorical=[CategoricalFeature(name="item")], sequences=[SequenceFeature(
        name="hist", max_len=6, separator="|", share_vocabulary_with="item", pooling="din", target="item")]), train, test, epochs=6)
    assert dien > 0.85 and dien - din > 0.1, (dien, din)


def test_the_trainer_trains_the_auxiliary_loss_as_a_task_the_balancer_sees():
    # Predictable histories (each item is followed by the next id): Eq. 1 can be learned.
    rng = np.random.default_rng(0)
    start, length = rng.integers(0, 30, 2000), rng.integers(3, 7, 2000)
    hist = ["|".join(str((s + k) % 30) for k in range(n)) for s, n in zip(start, length)]
    table = pa.table({"item": rng.integers(0, 30, 2000), "hist": hist, "click": rng.integers(0, 2, 2000)})
    _, trainer = _fit(dien_spec(aux_weight=1.0, negatives="histories"), table, table.slice(0, 200), epochs=4)
    assert trainer.loss_task_names == ["click", "dien:hist"] and trainer.balancer.task_names == ["click", "dien:hist"]
    assert trainer._epoch_losses["dien:hist"] < 0.7 * 2 * math.log(2), trainer._epoch_losses  # 2·log 2 at chance


def test_aux_weight_zero_trains_no_auxiliary_task_and_schema_round_trips(tmp_path):
    fitted = dien_spec(aux_weight=0.0).fit(_table(50, 0))
    model = build_model(ModelSpec(embedding_dim=4), fitted, CLICK)
    assert model.loss_task_names == ["click"] and model.auxiliary_tasks() == []
    fitted = dien_spec(aux_weight=0.3, negatives="histories").fit(_table(50, 0))
    fitted.save(tmp_path / "schema.json")
    loaded = FittedSchema.load(tmp_path / "schema.json")
    assert loaded.sequences[0].dien == {"aux_weight": 0.3, "negatives": "histories"}
    encoder = TabularEncoder.from_schema(loaded, 4)
    assert [(t.name, t.loss_weight) for t in encoder.auxiliary_tasks()] == [("dien:hist", 0.3)]
    batch = loaded.encode(_table(1, 3), CLICK).inputs  # a batch of one
    encoder.train()
    assert encoder(batch).shape == (1, 8) and set(encoder.auxiliary_losses()) == {"dien:hist"}
    encoder.eval()
    encoder(batch)
    assert encoder.auxiliary_losses() == {}  # evaluation computes no auxiliary loss


def test_a_dien_run_exports_to_torchscript_equal_to_pytorch(tmp_path):
    from mtlkit.config import RunConfig
    from mtlkit.export import export_run
    from mtlkit.run import train_run

    config = RunConfig.model_validate({"tasks": [t.model_dump() for t in CLICK], "features": dien_spec().model_dump(),
                                       "model": {"embedding_dim": 8}, "train": {"epochs": 1, "progress": False}})
    train_run(config, tmp_path / "run", tables={"train": _table(300, 0), "validation": _table(60, 1)})
    result = export_run(tmp_path / "run", "torchscript", tmp_path / "export")  # verified against PyTorch on held-out rows
    assert result.manifest["verification"]["checked"] and result.manifest["verification"]["max_abs_diff"] <= 1e-5
