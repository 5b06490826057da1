"""pandas in and out of the Python API: train_run on in-memory tables (DataFrame or pyarrow),
predict returning a DataFrame on the input's index, evaluate on a table; pandas stays optional."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from mtlkit.cli import app
from mtlkit.config import RunConfig, load_config_text
from mtlkit.data.tables import as_arrow
from mtlkit.errors import ConfigError, DataError
from mtlkit.run import evaluate_run, load_run, predict, predict_table, train_run
from test_cli import CONFIG

from conftest import click_table

runner = CliRunner()
IN_MEMORY = {key: value for key, value in CONFIG.items() if key != "data"}  # no files: tables come from Python
IN_MEMORY["train"] = {**CONFIG["train"], "epochs": 2, "progress": False}


def frames():
    train, valid, test = (click_table(n, seed).to_pandas() for n, seed in ((800, 0), (300, 1), (300, 2)))
    return train, valid, test


def test_import_mtlkit_does_not_import_pandas():
    code = ("import sys, mtlkit, mtlkit.run, mtlkit.cli, mtlkit.train, mtlkit.data, mtlkit.data.tables; "
            "print('pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_numeric_columns_convert_without_a_copy():
    frame = pd.DataFrame({"x": np.arange(1000, dtype=np.float64), "n": np.arange(1000, dtype=np.int64)})
    table = as_arrow(frame, "frame")
    for column in ("x", "n"):
        assert table.column(column).chunk(0).buffers()[1].address == frame[column].to_numpy().ctypes.data
    assert table.schema.metadata is None  # no pandas index notes travel on


def test_train_run_on_dataframes_matches_pyarrow_tables_and_records_the_splits(tmp_path):
    train, valid, test = frames()
    config = RunConfig.model_validate(IN_MEMORY)
    from_pandas = train_run(config, tmp_path / "pandas", tables={"train": train, "validation": valid, "test": test})
    from_arrow = train_run(config, tmp_path / "arrow", tables={"train": pa.Table.from_pandas(train), "validation":
                                                               pa.Table.from_pandas(valid), "test": pa.Table.from_pandas(test)})
    assert from_pandas["test"] == from_arrow["test"] and from_pandas["validation"] == from_arrow["validation"]
    assert from_pandas["test"]["click"]["rows"] == 300
    stored = yaml.safe_load((tmp_path / "pandas" / "config.yaml").read_text())["data"]
    assert stored["tables"] == ["train", "validation", "test"] and "train" not in {k for k, v in stored.items() if k != "tables"}


def test_a_train_table_alone_is_split_by_data_split(tmp_path):
    train, _, _ = frames()
    config = RunConfig.model_validate({**IN_MEMORY, "data": {"split": {"validation": 0.25, "test": 0.25, "seed": 1}}})
    summary = train_run(config, tmp_path / "run", tables={"train": train})
    assert summary["test"]["click"]["rows"] == 200 and summary["validation"]["click"]["rows"] == 200


def test_predict_returns_a_dataframe_on_the_input_index(tmp_path):
    train, valid, test = frames()
    train_run(RunConfig.model_validate(IN_MEMORY), tmp_path / "run", tables={"train": train, "validation": valid})
    new = test.drop(columns=["click", "buy"]).set_index(pd.Index(np.arange(1000, 1300), name="request"))
    new["request_id"] = [f"r{i}" for i in range(300)]
    scores = predict(tmp_path / "run", new, keep=["request_id"])
    assert isinstance(scores, pd.DataFrame)
    assert list(scores.columns) == ["request_id", "click", "buy"]
    assert scores.index.equals(new.index) and scores["request_id"].tolist() == new["request_id"].tolist()
    as_table = predict(load_run(tmp_path / "run"), pa.Table.from_pandas(new, preserve_index=False), keep=["request_id"])
    assert isinstance(as_table, pa.Table)
    np.testing.assert_array_equal(scores["click"].to_numpy(), as_table.column("click").to_numpy())
    np.testing.assert_array_equal(predict_table(load_run(tmp_path / "run"), new)["buy"], scores["buy"].to_numpy())
    with pytest.raises(DataError, match="data: missing column 'user_id' \\(asked to keep it\\)"):
        predict(tmp_path / "run", new, keep=["user_id"])


def test_an_in_memory_run_is_evaluated_on_a_table_and_says_so_without_one(tmp_path):
    train, valid, test = frames()
    summary = train_run(RunConfig.model_validate(IN_MEMORY), tmp_path / "run", tables={"train": train, "validation": valid, "test": test})
    evaluation = evaluate_run(tmp_path / "run", test)
    assert evaluation.metrics["data"]["click"]["auc"] == pytest.approx(summary["test"]["click"]["auc"])
    with pytest.raises(ConfigError, match=r"data.tables: the run was trained on in-memory tables \(train, validation, test\)"):
        evaluate_run(tmp_path / "run")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run")])
    assert result.exit_code == 2 and "in-memory tables" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("tables, config, error, message", [
    ({"train": [1, 2]}, {}, DataError, r"tables\['train'\]: expected a pyarrow Table or a pandas DataFrame, got list"),
    ({"validation": "frame"}, {}, ConfigError, r"tables: a 'train' table is required"),
    ({"train": "frame", "valid": "frame"}, {}, ConfigError, r"tables: unknown split 'valid'"),
    ({"train": "frame"}, {"data": {"train": "t.csv"}}, ConfigError, r"data: in-memory tables replace the config's files"),
    ({"train": "dupes"}, {}, DataError, r"tables\['train'\]: column 'user' appears more than once"),
    ({"train": "mixed"}, {}, DataError, r"tables\['train'\]: the DataFrame cannot be converted to Arrow: .*price"),
    ({"train": "empty"}, {}, DataError, r"tables\['train'\]: has no rows"),
    (None, {}, ConfigError, r"data: give either `train` \(a file\) or `dataset`.*or pass in-memory tables"),
])
def test_bad_tables_are_one_line_errors_and_write_nothing(tmp_path, tables, config, error, message):
    train, _, _ = frames()
    named = {"frame": train, "dupes": pd.concat([train, train[["user"]]], axis=1), "empty": train.iloc[:0],
             "mixed": train.assign(price=["1.5", 2.0] * 400)}
    tables = {k: named.get(v, v) if isinstance(v, str) else v for k, v in tables.items()} if tables is not None else None
    with pytest.raises(error, match=message):
        train_run(RunConfig.model_validate({**IN_MEMORY, **config}), tmp_path / "run", tables=tables)
    assert not (tmp_path / "run").exists()


def test_a_yaml_file_still_needs_its_data():
    with pytest.raises(ConfigError, match=r"run.yaml: key 'data': give either `train` \(a file\) or `dataset`"):
        load_config_text(yaml.safe_dump(IN_MEMORY), "run.yaml")
    with pytest.raises(ConfigError, match=r"run.yaml: key 'data': give one of `train` \(a file\), `dataset` or `tables`"):
        load_config_text(yaml.safe_dump({**IN_MEMORY, "data": {"train": "a.csv", "tables": ["train"]}}), "run.yaml")


def test_schema_fit_and_encode_take_dataframes():
    from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
    from mtlkit.tasks import Task

    train, _, _ = frames()
    spec = SchemaSpec(categorical=[CategoricalFeature(name="user")], numeric=[NumericFeature(name="price")])
    tasks = [Task(name="click", kind="binary")]
    fitted, reference = spec.fit(train), spec.fit(pa.Table.from_pandas(train))
    assert json.dumps(fitted.to_dict()) == json.dumps(reference.to_dict())
    encoded = fitted.encode(train, tasks)
    expected = reference.encode(pa.Table.from_pandas(train), tasks)
    assert all(np.array_equal(encoded.inputs[k].numpy(), expected.inputs[k].numpy()) for k in expected.inputs)
