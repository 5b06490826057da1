"""The ranking recipe of examples/shortvideo.yaml end to end through the CLI, on a small log."""

import json

import numpy as np
import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

from mtlkit.cli import app
from mtlkit.data.datasets.shortvideo import shortvideo_table

from conftest import REPO

runner = CliRunner()


def test_shortvideo_example_trains_evaluates_and_serves_a_fused_score(tmp_path):
    config = yaml.safe_load((REPO / "examples" / "shortvideo.yaml").read_text())
    config["data"]["dataset_options"] = {"rows": 6000, "seed": 0}
    config["train"].update(epochs=2, batch_size=256)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"

    result = runner.invoke(app, ["train", str(tmp_path / "run.yaml"), "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["click"]["auc"] > 0.55  # a constant scores 0.5
    assert "ndcg@10" in summary["test"]["click"] and "ece" in summary["test"]["share"]

    result = runner.invoke(app, ["evaluate", str(run), "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    assert "fused ranking score" in result.output
    fusion = json.loads((tmp_path / "eval.json").read_text())["fusion"]["test"]
    assert {"own/auc", "fused/auc", "own/gauc", "fused/gauc"} <= set(fusion["click"])

    # Serving data has no position (or any label): the bias features are missing there.
    serving = shortvideo_table(400, seed=7).drop_columns(["position", "click", "like", "share", "watch_time"])
    pq.write_table(serving, tmp_path / "serve.parquet")
    result = runner.invoke(app, ["predict", str(run), str(tmp_path / "serve.parquet"), "--out", str(tmp_path / "p.parquet")])
    assert result.exit_code == 0, result.output
    p = pq.read_table(tmp_path / "p.parquet").to_pydict()
    expected = np.array(p["click"]) * (0.1 + np.array(p["like"])) ** 0.3 * (1 + np.array(p["watch_time"])) ** 0.5
    assert np.allclose(p["fused_score"], expected, rtol=1e-5)
    assert min(p["watch_time"]) >= 0  # log1p regression served back in seconds
