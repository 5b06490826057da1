import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from mtlkit.config import RunConfig, load_config
from mtlkit.errors import ConfigError
from mtlkit.run import load_run, train_run


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 20, n)
    return pa.table({"user": user.astype(str), "x": rng.normal(size=n), "click": (rng.random(n) < 0.3 + 0.02 * user).astype(int),
                     "like": rng.integers(0, 2, n)})


def _config(tasks, **extra) -> RunConfig:
    return RunConfig.model_validate({"features": {"categorical": ["user"], "numeric": ["x"]},
                                     "tasks": [{"name": t, "kind": "binary"} for t in tasks],
                                     "model": {"backbone": "shared_bottom", "options": {"hidden": [8]}},
                                     "train": {"epochs": 1, "progress": False}, **extra})


def test_init_from_loads_matching_tensors_and_reports_what_stayed_fresh(tmp_path):
    tables = {"train": _table(400, 0), "validation": _table(100, 1)}
    train_run(_config(["click", "like"]), tmp_path / "first", tables=tables)
    source = load_run(tmp_path / "first").model.state_dict()
    config = _config(["click", "share"], init_from=str(tmp_path / "first"), train={"epochs": 1, "progress": False, "lr": 1e-12})
    tables = {s: t.append_column("share", t["like"]) for s, t in tables.items()}
    summary = train_run(config, tmp_path / "second", tables=tables)
    warm = summary["init_from"]
    assert warm["fresh"] == ["heads.share.output.bias", "heads.share.output.weight"]  # the new task's head stays as built
    assert warm["loaded"] == len(source) - 2  # everything else, the 'like' head excepted
    second = load_run(tmp_path / "second").model.state_dict()
    # lr ≈ 0: the shared weights are still the first run's
    assert torch.allclose(second["encoder.embedding.table.weight"], source["encoder.embedding.table.weight"], atol=1e-6)
    assert json.loads((tmp_path / "second" / "summary.json").read_text())["init_from"]["loaded"] == warm["loaded"]


def test_init_from_errors_before_anything_is_written(tmp_path):
    tables = {"train": _table(200, 0), "validation": _table(50, 1)}
    with pytest.raises(ConfigError, match="init_from: .*does not exist"):
        train_run(_config(["click"], init_from=str(tmp_path / "missing")), tmp_path / "run", tables=tables)
    assert not (tmp_path / "run").exists()
    torch.save({"model": {"other.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="init_from: no parameter of the checkpoint matches"):
        train_run(_config(["click"], init_from=str(tmp_path / "other.pt")), tmp_path / "run", tables=tables)
    assert not (tmp_path / "run").exists()


def test_a_relative_init_from_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    raw = _config(["click"]).model_dump(mode="json", exclude_none=True)
    raw["data"] = {"train": "train.csv"}
    raw["init_from"] = "runs/first"
    (tmp_path / "cfg" / "c.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "cfg" / "c.yaml").init_from == (tmp_path / "cfg" / "runs" / "first").resolve()
