import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from mtlkit.data.encoding import stable_hash
from mtlkit.data.schema import CategoricalFeature, FittedSchema, NumericFeature, SchemaSpec
from mtlkit.errors import DataError
from mtlkit.tasks import Task, TaskMask

from conftest import click_table

TASKS = [Task(name="click", kind="binary"), Task(name="buy", kind="binary", mask=TaskMask(column="click"))]
SPEC = SchemaSpec(
    categorical=[CategoricalFeature(name="user"), CategoricalFeature(name="item", min_freq=25)],
    numeric=[NumericFeature(name="price", transform="log1p", clip=(0.0, 500.0))],
)


def test_vocabulary_is_fit_on_training_split_only():
    train = pa.table({"user": ["a", "b", "a"], "item": [1, 1, 1], "price": [1.0, 2.0, 3.0], "click": [0, 1, 0], "buy": [0, 0, 0]})
    fitted = SPEC.fit(train)
    assert fitted.categorical[0].vocabulary == ["a", "b"]  # most frequent first
    other = pa.table({"user": ["c", "b", None], "item": [1, 2, 1], "price": [1.0, 1.0, 1.0], "click": [0, 1, 0], "buy": [0, 0, 0]})
    ids = fitted.encode(other, TASKS).inputs["categorical"]
    assert ids[:, 0].tolist() == [0, 2, 0]  # unseen and missing → OOV bucket 0


def test_min_freq_sends_rare_values_to_oov():
    table = click_table(600)
    fitted = SPEC.fit(table)
    counts = pc.value_counts(table["item"]).to_pylist()
    frequent = {str(c["values"]) for c in counts if c["counts"] >= 25}
    assert set(fitted.categorical[1].vocabulary) == frequent
    encoded = fitted.encode(table, TASKS).inputs["categorical"][:, 1]
    rare = ~np.isin(np.array([str(v) for v in table["item"].to_pylist()]), list(frequent))
    assert (encoded.numpy()[rare] == 0).all() and (encoded.numpy()[~rare] > 0).all()


def test_save_load_round_trip_maps_unseen_to_oov(tmp_path):
    train = click_table(600, seed=0)
    fitted = SPEC.fit(train)
    fitted.save(tmp_path / "schema.json")
    loaded = FittedSchema.load(tmp_path / "schema.json")
    new = click_table(200, seed=1)
    new = new.set_column(0, "user", pa.array(["never-seen"] + new["user"].to_pylist()[1:]))
    a, b = fitted.encode(new, TASKS), loaded.encode(new, TASKS)
    for key in a.inputs:
        assert torch.equal(a.inputs[key], b.inputs[key])
    assert a.inputs["categorical"][0, 0] == 0
    assert loaded.cardinalities == fitted.cardinalities


def test_numeric_missing_values_are_filled_and_flagged():
    train = pa.table({"x": [1.0, None, 3.0, float("nan"), float("inf")]})
    fitted = SchemaSpec(numeric=[NumericFeature(name="x")]).fit(train)
    assert fitted.numeric[0].has_missing_flag and fitted.numeric_dim == 2
    dense = fitted.encode(pa.table({"x": [1.0, None, 3.0]}), [], with_targets=False).inputs["numeric"]
    assert dense[:, 1].tolist() == [0.0, 1.0, 0.0]
    assert dense[1, 0] == 0.0  # the training mean, standardised
    assert dense[0, 0] == pytest.approx(-1.0) and dense[2, 0] == pytest.approx(1.0)
    assert torch.isfinite(dense).all()


def test_log1p_and_clip():
    fitted = SchemaSpec(numeric=[NumericFeature(name="x", transform="log1p", clip=(0, 100))]).fit(pa.table({"x": [0.0, 1e6, 100.0]}))
    dense = fitted.encode(pa.table({"x": [1e9, 100.0]}), [], with_targets=False).inputs["numeric"]
    assert dense[0, 0] == dense[1, 0]  # both clipped to 100 before the log


def test_hashing_is_stable_and_in_range():
    strings = pa.array(["alpha", "beta", "", None, "alpha", "é"])
    first, second = stable_hash(strings), stable_hash(strings)
    assert np.array_equal(first, second) and first[0] == first[4] and first[0] != first[1]
    # FNV-1a 64 of "a" is a published test vector.
    assert stable_hash(pa.array(["a"]))[0] == np.uint64(0xAF63DC4C8601EC8C)
    fitted = SchemaSpec(categorical=[CategoricalFeature(name="c", hash_buckets=7)]).fit(pa.table({"c": ["x"]}))
    ids = fitted.encode(pa.table({"c": strings}), [], with_targets=False).inputs["categorical"][:, 0]
    assert ids.min() >= 0 and ids.max() <= 7 and ids[3] == 0 and fitted.cardinalities == [8]


def test_targets_masks_and_weights():
    table = click_table(300)
    table = table.append_column("w", pa.array(np.full(300, 2.0)))
    tasks = [Task(name="click", kind="binary", weight_column="w"), TASKS[1]]
    encoded = SPEC.fit(table).encode(table, tasks)
    assert torch.equal(encoded.masks["buy"], encoded.targets["click"].bool())
    assert encoded.weights["click"].eq(2.0).all() and "buy" not in encoded.weights


def test_bad_labels_and_missing_columns_are_named():
    table = click_table(50)
    fitted = SPEC.fit(table)
    bad = table.set_column(3, "click", pa.array([0] * 49 + [3]))
    with pytest.raises(DataError, match=r"train.csv: label column 'click' of task 'click', data row 50"):
        fitted.encode(bad, TASKS, "train.csv")
    with pytest.raises(DataError, match=r"missing column 'price'"):
        fitted.encode(table.drop_columns(["price"]), TASKS, "valid.csv")
    with pytest.raises(DataError, match=r"column 'click' must be numeric"):
        fitted.encode(table.set_column(3, "click", pa.array(["yes"] * 50)), TASKS, "x")


def test_small_batches_against_a_large_vocabulary_encode_like_large_ones():
    """Serving encodes a few rows against the whole catalogue: the O(rows) path gives the same ids."""
    from mtlkit.data.schema import FittedCategorical, encode_categorical

    feature = FittedCategorical("item", [f"i{k}" for k in range(5000)])
    rows = ["i7", "unseen", None, "i4999"]
    small = encode_categorical(feature, pa.chunked_array([pa.array(rows)]))  # 64·4 < 5000: dictionary path
    large = encode_categorical(feature, pa.chunked_array([pa.array(rows * 2000)]))[:4]  # Arrow index_in path
    assert small.tolist() == large.tolist() == [8, 0, 0, 5000]
