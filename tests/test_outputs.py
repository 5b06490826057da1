"""Outputs in every format, written atomically; Parquet integrity checks; the strict YAML loader."""

from __future__ import annotations

import decimal
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mtlkit.cli import app
from mtlkit.data.readers import read_table
from mtlkit.errors import ConfigError, DataError
from mtlkit.outputs import atomic_output, write_text
from mtlkit.safe_yaml import load_yaml
from test_bad_inputs import CONFIG, TRAINED, base  # noqa: F401  (the corpus's trained run)

from conftest import click_table

runner = CliRunner()


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".tsv", ".parquet"])
def test_predict_writes_the_format_its_suffix_names(base, tmp_path, suffix):  # noqa: F811
    out_csv, out = tmp_path / "p.csv", tmp_path / f"p{suffix}"
    for path in (out_csv, out):
        result = runner.invoke(app, ["predict", str(base / TRAINED), str(base / "test.csv"), "--out", str(path), "--keep", "user"])
        assert result.exit_code == 0, result.output
    expected = pacsv.read_csv(out_csv).to_pylist()
    if suffix == ".json":
        rows = json.loads(out.read_text())
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    elif suffix == ".tsv":
        rows = pacsv.read_csv(out, parse_options=pacsv.ParseOptions(delimiter="\t")).to_pylist()
    else:
        rows = pq.read_table(out).to_pylist()
        assert pq.ParquetFile(out, page_checksum_verification=True).read().num_rows == len(expected)
    assert [r["user"] for r in rows] == [r["user"] for r in expected]
    assert np.allclose([r["click"] for r in rows], [r["click"] for r in expected], rtol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))


def test_predictions_in_parquet_carry_checksums_that_catch_damage(base, tmp_path):  # noqa: F811
    out = tmp_path / "p.parquet"
    assert runner.invoke(app, ["predict", str(base / TRAINED), str(base / "test.csv"), "--out", str(out)]).exit_code == 0
    chunk = pq.ParquetFile(out).metadata.row_group(0).column(0)
    data = bytearray(out.read_bytes())
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data[start + chunk.total_compressed_size - 1] ^= 0x01  # one bit: the last byte of the first column's last page
    out.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        read_table(out)


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    (tmp_path / "old.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "old.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "new" / "deeper" / "p.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"] and (tmp_path / "old.json").read_text() == "old"
    write_text(tmp_path / "old.json", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"] and (tmp_path / "old.json").read_text() == "new"


def test_valid_parquet_of_every_column_type_reads_back(tmp_path):
    """The statistics check must not cry wolf: NaN, ±inf, nulls, unsigned, float16, non-ASCII, long strings, logical types."""
    table = pa.table({
        "u64": pa.array([1, 2**64 - 1, 3], pa.uint64()), "i8": pa.array([-128, 0, 127], pa.int8()),
        "f32": pa.array([1.5, np.nan, -2.0], pa.float32()), "f16": pa.array(np.array([1, 2, 3], np.float16)),
        "inf": [np.inf, -np.inf, 0.0], "nulls": pa.array([None, None, None], pa.float64()),
        "s": ["é", "a", None], "ls": pa.array(["zz", "é\u00ff", "a"], pa.large_string()), "long": ["x" * 10_000, "y", "z"],
        "date": pa.array([1, 2, 3], pa.date32()), "dec": pa.array([decimal.Decimal("1.5")] * 3, pa.decimal128(10, 2)),
        "dict": pa.array(["x", "y", "x"]).dictionary_encode(), "list": [[1], [], None],
    })
    for options in ({}, {"row_group_size": 1}, {"compression": "none", "write_page_checksum": True}, {"use_dictionary": False}):
        pq.write_table(table, tmp_path / "t.parquet", **options)
        assert read_table(tmp_path / "t.parquet").to_pylist()[0]["u64"] == 1, options


def test_parquet_values_outside_the_recorded_range_are_found(tmp_path):
    table = click_table(200, 0)
    pq.write_table(table, tmp_path / "t.parquet", compression="none", use_dictionary=False)
    data = bytearray((tmp_path / "t.parquet").read_bytes())
    start = bytes(data).find(np.float64(table["price"][10].as_py()).tobytes())  # the 11th price, plain-encoded
    data[start : start + 8] = np.float64(-1e300).tobytes()
    (tmp_path / "t.parquet").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t.parquet: damaged Parquet file: column 'price' data row 11: value -1e\+300"):
        read_table(tmp_path / "t.parquet")


def test_yaml_merge_keys_and_aliases_still_work():
    text = "base: &b {lr: 0.1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 0.5\nother: *b\n"
    assert load_yaml(text, "c.yaml") == {"base": {"lr": 0.1, "epochs": 2}, "train": {"lr": 0.5, "epochs": 2},
                                         "other": {"lr": 0.1, "epochs": 2}}
    assert load_yaml("a: " + "[" * 60 + "]" * 60 + "\n", "c.yaml")["a"] is not None  # deep, but within the limit
    with pytest.raises(ConfigError, match=r"c.yaml: key 'lr' is given twice \(lines 2 and 3\)"):
        load_yaml("train:\n  lr: 1\n  lr: 2\n", "c.yaml")
    with pytest.raises(ConfigError, match="refers to the value that contains it"):
        load_yaml("a: &a [*a]\n", "c.yaml")


def test_a_config_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(CONFIG).encode())
    from mtlkit.config import load_config

    assert load_config(path).seed == 0
