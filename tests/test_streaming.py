"""Streaming Parquet batches (mtlkit.data.streaming): coverage, order, resumption, shards, memory, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.config import load_config_text
from mtlkit.data.datasets.shortvideo import generate_shortvideo, shortvideo_schema, shortvideo_table, shortvideo_tasks
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.data.streaming import ParquetBatches, fit_schema_streaming
from mtlkit.errors import ConfigError, DataError
from mtlkit.models import ModelSpec, build_model
from mtlkit.run import train_run
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec

from conftest import InterruptAfter, click_table

TASKS = [Task(name="click", kind="binary"), Task(name="buy", kind="binary")]
SPEC = SchemaSpec(categorical=[CategoricalFeature(name="user"), CategoricalFeature(name="item")],
                  numeric=[NumericFeature(name="price", transform="log1p"), NumericFeature(name="row", transform="none")])
GROUPS = (300, 180, 420, 250, 350)  # unequal row groups, 1,500 rows


def write_groups(path: Path, table: pa.Table, sizes) -> Path:
    """``table`` as a Parquet file with one row group per entry of ``sizes``."""
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for size in sizes:
            writer.write_table(table.slice(start, size), row_group_size=size)
            start += size
    assert pq.ParquetFile(path).metadata.num_row_groups == len(sizes)
    return path


@pytest.fixture(scope="module")
def clicks(tmp_path_factory) -> tuple[Path, pa.Table]:
    table = click_table(sum(GROUPS), seed=3)
    table = table.append_column("row", pa.array(np.arange(table.num_rows, dtype=np.float64)))
    return write_groups(tmp_path_factory.mktemp("clicks") / "clicks.parquet", table, GROUPS), table


@pytest.fixture(scope="module")
def schema(clicks):
    return SPEC.fit(clicks[1])


def rows_of(steps) -> np.ndarray:
    """The ``row`` feature (numeric, untransformed: the file's row number) of every batch, in order."""
    return torch.cat([step[0].inputs["numeric"][:, 1] for step in steps]).numpy().astype(np.int64)


def source(clicks, schema, **options) -> ParquetBatches:
    return ParquetBatches(clicks[0], schema, TASKS, **{"batch_size": 64, "buffer_rows": 400, **options})


def assert_batches_equal(a, b) -> None:
    assert len(a) == len(b)
    for (x,), (y,) in zip(a, b):
        for group in ("inputs", "targets", "masks", "weights"):
            left, right = getattr(x, group), getattr(y, group)
            assert left.keys() == right.keys()
            for key in left:
                assert torch.equal(left[key], right[key]), (group, key)


def test_an_epoch_holds_every_row_once_encoded_as_in_memory(clicks, schema):
    batches = source(clicks, schema)
    steps = list(batches.epoch(0))
    rows = rows_of(steps)
    assert len(steps) == len(batches) == -(-1500 // 64) and sorted(rows.tolist()) == list(range(1500))
    # Every streamed row equals the in-memory encoding of the same file row, labels included.
    whole = schema.encode(clicks[1], TASKS).take(torch.from_numpy(rows))
    streamed = torch.cat([s[0].inputs["categorical"] for s in steps])
    assert torch.equal(streamed, whole.inputs["categorical"])
    assert torch.equal(torch.cat([s[0].targets["buy"] for s in steps]), whole.targets["buy"])


def test_order_is_a_function_of_seed_and_epoch(clicks, schema):
    first = rows_of(source(clicks, schema, seed=1).epoch(0))
    assert np.array_equal(first, rows_of(source(clicks, schema, seed=1, prefetch=0).epoch(0)))
    assert not np.array_equal(first, rows_of(source(clicks, schema, seed=1).epoch(1)))
    assert not np.array_equal(first, rows_of(source(clicks, schema, seed=2).epoch(0)))
    # Shuffled beyond one row group: the first batch mixes groups (row numbers far apart).
    assert np.ptp(first[:64]) > max(GROUPS)


@pytest.mark.parametrize("shuffle", [True, False])
def test_resuming_at_step_k_yields_the_tail_of_the_epoch(clicks, schema, shuffle):
    batches = source(clicks, schema, shuffle=shuffle, buffer_rows=256)
    full = list(batches.epoch(2))
    for k in (1, 7, 13, len(full) - 1, len(full)):
        assert_batches_equal(list(batches.epoch(2, start_step=k)), full[k:])
    if not shuffle:
        assert rows_of(full).tolist() == list(range(1500))


def test_resumption_is_exact_with_sequences_bias_and_masks(tmp_path):
    # Short-video logs: list-column histories sharing the item vocabulary, bias features, a masked
    # regression task, group ids (left unread); row groups of 2,048 rows.
    path = generate_shortvideo(tmp_path / "log.parquet", rows=10_240, chunk_rows=2_048, items_per_request=2)
    schema = fit_schema_streaming(shortvideo_schema(), path)
    batches = ParquetBatches(path, schema, shortvideo_tasks(), batch_size=500, buffer_rows=3_000, seed=4)
    full = list(batches.epoch(1))
    assert_batches_equal(list(batches.epoch(1, start_step=9)), full[9:])
    assert full[0][0].inputs["seq:hist_items"].shape == (500, 20) and "watch_time" in full[0][0].masks


def test_fit_schema_streaming_equals_the_in_memory_fit(tmp_path, clicks, schema):
    path = generate_shortvideo(tmp_path / "log.parquet", rows=8_192, chunk_rows=2_048, items_per_request=2)
    spec = shortvideo_schema()
    for streamed, whole in ((fit_schema_streaming(spec, path), spec.fit(shortvideo_table(8_192, items_per_request=2))),
                            (fit_schema_streaming(SPEC, clicks[0]), schema)):
        for a, b in zip([*streamed.categorical, *streamed.bias, *streamed.sequences], [*whole.categorical, *whole.bias, *whole.sequences]):
            assert a == b
        for a, b in zip(streamed.numeric, whole.numeric):
            assert (a.name, a.has_missing_flag) == (b.name, b.has_missing_flag)
            assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-12) and a.std == pytest.approx(b.std, rel=1e-9)
    sampled = fit_schema_streaming(spec, path, sample_rows=2_000, seed=1)
    assert sampled == fit_schema_streaming(spec, path, sample_rows=2_000, seed=1)  # seeded
    items = set(fit_schema_streaming(spec, path).categorical[1].vocabulary)
    assert set(sampled.categorical[1].vocabulary) < items  # a sample sees fewer items


def test_two_ranks_partition_the_rows(clicks, schema, tmp_path):
    equal = write_groups(tmp_path / "equal.parquet", clicks[1], [250] * 6)
    ranks = [ParquetBatches(equal, schema, TASKS, batch_size=64, buffer_rows=300, rank=r, world_size=2) for r in (0, 1)]
    parts = [rows_of(r.epoch(3)) for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == -(-750 // 64)
    assert not set(parts[0]) & set(parts[1]) and sorted(np.concatenate(parts).tolist()) == list(range(1500))
    # Unequal shards (groups 0,2,4 = 1,070 rows vs 430): both ranks run the smaller's step count (DDP
    # must agree), rows never overlap, and the larger leaves its surplus out of the epoch.
    ranks = [source(clicks, schema, rank=r, world_size=2) for r in (0, 1)]
    parts = [rows_of(r.epoch(0)) for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == -(-430 // 64) and len(parts[1]) == 430
    assert not set(parts[0]) & set(parts[1]) and len(set(parts[0])) == len(parts[0]) == 7 * 64
    with pytest.raises(DataError, match="row groups cannot feed 6 ranks"):
        source(clicks, schema, rank=0, world_size=6)


def test_buffer_never_holds_more_than_buffer_rows_plus_one_row_group(clicks, schema):
    for buffer_rows in (100, 400, 5_000):
        batches = source(clicks, schema, buffer_rows=buffer_rows)
        for _ in batches.epoch(0):
            pass
        assert batches.peak_buffer_rows <= max(buffer_rows, 64) + max(GROUPS)
        assert batches.peak_buffer_rows >= min(buffer_rows, 1500)  # it did fill up
    resumed = source(clicks, schema, buffer_rows=100, prefetch=0)
    list(resumed.epoch(0, start_step=20))
    assert resumed.peak_buffer_rows <= 100 + max(GROUPS)


def test_a_streamed_file_trains_as_well_as_the_table_in_memory(tmp_path):
    # Tolerance: validation AUC of the two runs within 0.02 (same model, data and epochs; only the
    # shuffle order differs), and both well above chance.
    table = click_table(6_000, seed=5)
    path = write_groups(tmp_path / "train.parquet", table.slice(0, 5_000), [1_000] * 5)
    fitted = fit_schema_streaming(SPEC.model_copy(update={"numeric": SPEC.numeric[:1]}), path)
    validation = fitted.encode(table.slice(5_000), TASKS)

    def fit(batches, run_dir=None):
        torch.manual_seed(0)
        model = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [16]}, embedding_dim=4), fitted, TASKS)
        spec = TrainSpec(epochs=4, batch_size=128, lr=0.02, progress=False, patience=None, checkpoint_every=10)
        return Trainer(model, TASKS, build_balancer(BalancerSpec(), TASKS), spec, run_dir).fit(batches, validation)

    streamed = fit(ParquetBatches(path, fitted, TASKS, batch_size=128, buffer_rows=2_000, seed=0))
    in_memory = fit(fitted.encode(table.slice(0, 5_000), TASKS).batches(128, shuffle=True, seed=0))
    for task in ("click", "buy"):
        assert streamed.best_results[task]["auc"] == pytest.approx(in_memory.best_results[task]["auc"], abs=0.02)
        assert streamed.best_results[task]["auc"] > 0.7
    # Interrupted mid-epoch and resumed from last.pt: the same history as the uninterrupted run.
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(InterruptAfter(ParquetBatches(path, fitted, TASKS, batch_size=128, buffer_rows=2_000), 55), run_dir)
    resumed = fit(ParquetBatches(path, fitted, TASKS, batch_size=128, buffer_rows=2_000), run_dir)
    assert [r["val/click/auc"] for r in resumed.history] == [r["val/click/auc"] for r in streamed.history]


def test_mtlkit_train_streams_the_training_file(tmp_path, clicks):
    validation = tmp_path / "valid.parquet"
    pq.write_table(clicks[1].slice(0, 300), validation)
    text = f"""
data: {{train: {clicks[0]}, validation: {validation}, streaming: {{buffer_rows: 500, prefetch: 1}}}}
features: {{categorical: [user, item], numeric: [price]}}
tasks: [{{name: click, kind: binary}}]
model: {{backbone: shared_bottom, options: {{hidden: [8]}}}}
train: {{epochs: 3, batch_size: 256, lr: 0.01, progress: false}}
"""
    summary = train_run(load_config_text(text, "run.yaml"), tmp_path / "run")
    assert summary["epochs_run"] == 3
    assert summary["validation"]["click"]["auc"] > 0.6, summary["validation"]  # it learned from the stream (a constant: 0.5)
    assert (tmp_path / "run" / "schema.json").exists()


def test_bad_streaming_input_gets_one_clear_error(tmp_path, clicks, schema):
    base = "features: {numeric: [price]}\ntasks: [{name: click, kind: binary}]\n"
    with pytest.raises(ConfigError, match="run.yaml: key 'data': streaming needs a `validation` file"):
        load_config_text("data: {train: a.parquet, streaming: {}}\n" + base, "run.yaml")
    with pytest.raises(ConfigError, match="streaming reads `train` from Parquet"):
        load_config_text("data: {train: a.csv, validation: b.csv, streaming: {}}\n" + base, "run.yaml")
    with pytest.raises(ConfigError, match="buffer_rows"):
        load_config_text("data: {train: a.parquet, validation: b.csv, streaming: {buffer_rows: 0}}\n" + base, "run.yaml")
    other = tmp_path / "other.parquet"
    pq.write_table(clicks[1].drop_columns(["buy"]), other)
    with pytest.raises(DataError, match=f"{other}: missing column 'buy'"):
        ParquetBatches([clicks[0], other], schema, TASKS, batch_size=8)
    with pytest.raises(DataError, match="no such file"):
        ParquetBatches(tmp_path / "absent.parquet", schema, TASKS, batch_size=8)
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DataError, match=f"{broken}: cannot be read as Parquet"):
        fit_schema_streaming(SPEC, broken)
    bad_label = tmp_path / "bad.parquet"
    pq.write_table(clicks[1].set_column(3, "click", pa.array(np.full(1500, 2))), bad_label, row_group_size=500)
    with pytest.raises(DataError, match=r"bad.parquet \(row group \d, file rows \d+-\d+\): label column 'click'"):
        list(ParquetBatches(bad_label, schema, TASKS, batch_size=8).epoch(0))
