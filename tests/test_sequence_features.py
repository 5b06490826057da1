import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.config import RunConfig
from mtlkit.data.schema import CategoricalFeature, FittedSchema, NumericFeature, SchemaSpec, SequenceFeature
from mtlkit.errors import DataError
from mtlkit.metrics.functions import auc
from mtlkit.models import ModelSpec, build_model
from mtlkit.nn import DinAttention, TabularEncoder, masked_pool
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, predict_logits

CLICK = [Task(name="click", kind="binary")]


def item_spec(**seq) -> SchemaSpec:
    options = {"name": "hist", "max_len": 3, "share_vocabulary_with": "item", **seq}
    return SchemaSpec(categorical=[CategoricalFeature(name="item")], sequences=[SequenceFeature(**options)])


def test_list_and_delimited_columns_keep_the_last_items_pad_and_map_unseen_to_zero():
    train = pa.table({"item": ["a", "b", "c", "a"], "hist": [["a", "b"], ["b"], ["c", "a"], []]})
    fitted = item_spec().fit(train)
    vocab = {v: i + 1 for i, v in enumerate(fitted.categorical[0].vocabulary)}
    a, b, c = vocab["a"], vocab["b"], vocab["c"]
    rows = [["a", "b", "c", "a", "b"], ["zz", "c"], [], None, ["c", None, "a"]]
    lists = pa.table({"item": ["a"] * 5, "hist": pa.array(rows, type=pa.list_(pa.string()))})
    delimited = pa.table({"item": ["a"] * 5, "hist": ["a|b|c|a|b", "zz | c", "", None, "c||a"]})
    expected = [[c, a, b], [0, c, 0], [0, 0, 0], [0, 0, 0], [c, a, 0]]  # last 3, left-aligned; 'zz' unseen → 0
    assert fitted.encode(lists, [], with_targets=False).inputs["seq:hist"].tolist() == expected
    with pytest.raises(DataError, match=r"x.csv: sequence column 'hist' holds strings: set `separator`"):
        fitted.encode(delimited, [], "x.csv", with_targets=False)
    piped = item_spec(separator="|").fit(train)
    assert piped.encode(delimited, [], with_targets=False).inputs["seq:hist"].tolist() == expected
    # Chunked and sliced columns encode the same as one contiguous column.
    chunked = pa.concat_tables([lists.slice(0, 2), lists.slice(2)])
    assert fitted.encode(chunked.slice(1), [], with_targets=False).inputs["seq:hist"].tolist() == expected[1:]
    with pytest.raises(DataError, match=r"column 'hist' must be a list column or a delimited string column, found int64"):
        fitted.encode(pa.table({"item": ["a"], "hist": [3]}), [], with_targets=False)


def test_shared_vocabulary_gives_an_item_the_same_id_in_both_places():
    train = pa.table({"item": [10, 11, 12], "hist": pa.array([[11, 99], [], [10, 10]], type=pa.list_(pa.int64()))})
    fitted = item_spec().fit(train)
    assert "99" in fitted.categorical[0].vocabulary  # seen only in histories: still gets a row
    assert fitted.sequences[0].cardinality == 0 and fitted.cardinalities == [5]
    # Ints in the item column and delimited strings in the history map to one vocabulary.
    other = pa.table({"item": [99, 11], "hist": ["11|10", "99"]})
    enc = item_spec(separator="|").fit(train).encode(other, [], with_targets=False).inputs
    (item_99, item_11), hist = enc["categorical"][:, 0].tolist(), enc["seq:hist"].tolist()
    assert hist[0][0] == item_11 and hist[1][0] == item_99 and item_99 != item_11 and 0 not in (item_99, item_11)


def test_own_vocabulary_min_freq_and_hashing():
    train = pa.table({"tags": ["x|x|y", "x|z", ""]})
    spec = SchemaSpec(sequences=[SequenceFeature(name="tags", max_len=2, separator="|", min_freq=2)])
    fitted = spec.fit(train)
    assert fitted.sequences[0].vocabulary == ["x"] and fitted.sequences[0].cardinality == 2
    assert fitted.encode(train, [], with_targets=False).inputs["seq:tags"].tolist() == [[1, 0], [1, 0], [0, 0]]
    hashed = SchemaSpec(sequences=[SequenceFeature(name="tags", max_len=3, separator="|", hash_buckets=5)]).fit(train)
    ids = hashed.encode(train, [], with_targets=False).inputs["seq:tags"]
    assert ids[0, 0] == ids[0, 1] == ids[1, 0] and ids.max() <= 5 and ids[0, :3].ne(0).all()


def test_masked_mean_of_an_empty_history_is_zero_without_nan():
    emb = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    for mode in ("mean", "sum"):
        pooled = masked_pool(emb, mask, mode)
        assert torch.equal(pooled[1], torch.zeros(3))
    pooled.sum().backward()
    assert torch.isfinite(emb.grad).all() and emb.grad[1].abs().sum() == 0
    mean = masked_pool(emb, mask, "mean")
    assert torch.allclose(mean[0], (emb[0, 0] + emb[0, 2]) / 2)


@pytest.mark.parametrize("normalize", [False, True])
def test_din_gives_padding_zero_weight_and_ignores_its_content(normalize):
    torch.manual_seed(0)
    din = DinAttention(4, normalize=normalize)
    history, target = torch.randn(3, 5, 4), torch.randn(3, 4)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5, [False] * 5])
    pooled, weights = din(history, target, mask), din.weights(history, target, mask)
    assert torch.equal(weights[~mask], torch.zeros(int((~mask).sum())))
    changed = history.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 4) * 100
    changed[2, 0] = float("nan")  # even NaN in padding cannot leak through
    assert torch.equal(din(changed, target, mask), pooled)
    assert torch.equal(pooled[2], torch.zeros(4))
    if normalize:
        assert torch.allclose(weights[:2].sum(1), torch.ones(2))
    else:  # the paper's unnormalised weights: they need not sum to one
        assert not torch.allclose(weights[:2].sum(1), torch.ones(2))
    target.requires_grad_(True)
    din(changed, target, mask).sum().backward()
    assert torch.isfinite(target.grad).all()


def test_gradient_reaches_the_shared_table_from_both_uses():
    train = pa.table({"item": ["a", "b", "c"], "hist": [["b"], ["c"], ["a"]], "x": [1.0, 2.0, 3.0]})
    spec = SchemaSpec(categorical=[CategoricalFeature(name="item")], numeric=[NumericFeature(name="x")],
                      sequences=[SequenceFeature(name="hist", max_len=2, share_vocabulary_with="item", pooling="din", target="item")])
    fitted = spec.fit(train)
    encoder = TabularEncoder.from_schema(fitted, embedding_dim=4)
    assert encoder.embedding.table.weight.shape[0] == 4  # one table, no rows of its own for the history
    assert encoder.output_dim == 4 + 1 + 4
    batch = fitted.encode(pa.table({"item": ["a"], "hist": [["b", "zz"]], "x": [1.0]}), [], with_targets=False).inputs
    encoder(batch).sum().backward()
    grad = encoder.embedding.table.weight.grad
    (a,), (b, pad) = batch["categorical"][0].tolist(), batch["seq:hist"][0].tolist()
    assert grad[a].abs().sum() > 0 and grad[b].abs().sum() > 0  # candidate use and history use
    assert pad == 0 and grad[0].abs().sum() == 0  # the padding/OOV slot in the history gets nothing


def test_batches_take_and_subset_carry_sequences_and_a_batch_of_one_runs():
    train = pa.table({"item": ["a", "b", "c", "a"], "hist": ["b|c", "", "a|a|b|c", "c"], "click": [1, 0, 1, 0], "pos": [1, 2, 3, 1]})
    spec = SchemaSpec(categorical=[CategoricalFeature(name="item")], bias=["pos"],
                      sequences=[SequenceFeature(name="hist", max_len=3, separator="|", share_vocabulary_with="item", pooling="din", target="item")])
    fitted = spec.fit(train)
    table = fitted.encode(train, CLICK)
    assert table.take(torch.tensor([2])).inputs["seq:hist"].tolist() == table.inputs["seq:hist"][2:3].tolist()
    sub = table.subset(torch.tensor([3, 0]))
    assert sub.inputs["seq:hist"].shape == (2, 3) and sub.inputs["bias"].shape == (2, 1) and len(sub) == 2
    assert [b[0].size for b in table.batches(3).epoch()] == [3, 1]
    model = build_model(ModelSpec(backbone="shared_bottom", embedding_dim=4), fitted, CLICK).eval()
    assert model(table.take(slice(1, 2)).inputs)["click"].shape == (1,)  # batch of one, empty history


def membership_table(n: int, seed: int, n_items: int = 40, max_len: int = 6) -> pa.Table:
    """click = 1 exactly when the candidate item is in the user's history: only the history can tell."""
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, n_items, (n, max_len))
    length = rng.integers(1, max_len + 1, n)
    valid = np.arange(max_len)[None, :] < length[:, None]
    from_hist = hist[np.arange(n), rng.integers(0, length)]
    candidate = np.where(rng.random(n) < 0.5, from_hist, rng.integers(0, n_items, n))
    click = ((hist == candidate[:, None]) & valid).any(axis=1).astype(np.int64)
    strings = ["|".join(map(str, h[:k])) for h, k in zip(hist, length)]
    return pa.table({"item": candidate, "hist": strings, "click": click})


def _train_auc(spec: SchemaSpec, train: pa.Table, test: pa.Table) -> float:
    fitted = spec.fit(train)
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="shared_bottom", embedding_dim=8, options={"hidden": [32]}), fitted, CLICK)
    trainer = Trainer(model, CLICK, build_balancer(BalancerSpec(), CLICK),
                      TrainSpec(epochs=8, batch_size=64, lr=1e-2, progress=False, patience=None))
    trainer.fit(fitted.encode(train, CLICK).batches(64, shuffle=True), fitted.encode(test, CLICK))
    scores = predict_logits(model, fitted.encode(test, CLICK, with_targets=False), 1024)["click"].numpy()
    return auc(scores, test.column("click").to_numpy())


def test_din_learns_a_target_that_needs_the_history():
    train, test = membership_table(3000, 0), membership_table(1000, 1)
    with_din = _train_auc(item_spec(separator="|", max_len=6, pooling="din", target="item"), train, test)
    without = _train_auc(SchemaSpec(categorical=[CategoricalFeature(name="item")]), train, test)
    # Without the history the label is unpredictable (AUC ≈ 0.5); DIN recovers most of it.
    assert without < 0.6
    assert with_din > 0.85 and with_din - without > 0.25, (with_din, without)


def test_bias_features_are_encoded_apart_and_zero_at_serving():
    train = pa.table({"item": ["a", "b", "a"], "hist": [["a"], [], ["b"]], "position": [1, 2, 1], "device": ["ios", "web", "web"], "click": [1, 0, 1]})
    spec = SchemaSpec(categorical=[CategoricalFeature(name="item")], bias=["position", "device"],
                      sequences=[SequenceFeature(name="hist", max_len=2, share_vocabulary_with="item")])
    fitted = spec.fit(train)
    assert fitted.bias_cardinalities == [3, 3] and fitted.cardinalities == [3]
    enc = fitted.encode(train, CLICK)
    assert enc.inputs["bias"].tolist() == [[1, 2], [2, 1], [1, 1]]  # own vocabularies, most frequent first and enc.inputs["categorical"].shape == (3, 1)
    assert TabularEncoder.from_schema(fitted, 4).output_dim == 4 + 4  # bias is not the main encoder's input
    assert fitted.encode(train, CLICK, serving=True).inputs["bias"].eq(0).all()
    served = fitted.encode(train.drop_columns(["position", "device"]), CLICK, with_targets=False)  # prediction
    assert served.inputs["bias"].shape == (3, 2) and served.inputs["bias"].eq(0).all()
    with pytest.raises(DataError, match=r"valid.csv \(bias features.*missing column 'device'"):
        fitted.encode(train.drop_columns(["device"]), CLICK, "valid.csv")


def test_save_load_round_trip_and_old_schema_files(tmp_path):
    train = pa.table({"item": ["a", "b", "a"], "hist": ["a|b", "", "b"], "tags": [["t1"], ["t2", "t1"], []], "position": [1, 2, 3]})
    spec = SchemaSpec(
        categorical=[CategoricalFeature(name="item")], bias=["position"],
        sequences=[SequenceFeature(name="hist", max_len=4, separator="|", pooling="din", target="item",
                                   share_vocabulary_with="item", normalize=True, attention_hidden=(8, 4)),
                   SequenceFeature(name="tags", max_len=2, pooling="sum", hash_buckets=16)],
    )
    fitted = spec.fit(train)
    fitted.save(tmp_path / "schema.json")
    loaded = FittedSchema.load(tmp_path / "schema.json")
    assert loaded == fitted
    a, b = fitted.encode(train, [], serving=False), loaded.encode(train, [], serving=False)
    assert a.inputs.keys() == b.inputs.keys() == {"categorical", "seq:hist", "seq:tags", "bias"}
    assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
    old = fitted.to_dict()
    del old["sequences"], old["bias"]
    legacy = FittedSchema.from_dict(old)
    assert legacy.sequences == [] and legacy.bias == [] and legacy.cardinalities == fitted.cardinalities


def test_config_syntax_and_bad_references():
    config = RunConfig.model_validate({
        "data": {"train": "logs.parquet"},
        "tasks": [{"name": "click", "kind": "binary"}],
        "features": {
            "categorical": ["user", "item"],
            "sequences": [{"name": "hist", "max_len": 50, "pooling": "din", "target": "item",
                           "share_vocabulary_with": "item", "separator": "|"}],
            "bias": ["position", "device"],
        },
    })
    assert [f.name for f in config.features.bias] == ["position", "device"]
    with pytest.raises(ValidationError, match="`target` is required with pooling din"):
        SequenceFeature(name="h", max_len=3, pooling="din")
    with pytest.raises(ValidationError, match="share_vocabulary_with 'itm' is not a categorical feature"):
        item_spec(share_vocabulary_with="itm")
    with pytest.raises(ValidationError, match="min_freq/hash_buckets come from 'item'"):
        item_spec(min_freq=3)
