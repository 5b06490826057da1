import numpy as np
import pyarrow as pa
import pytest
import yaml
from pydantic import ValidationError

from mtlkit.config import RunConfig, load_config
from mtlkit.data.derived_targets import DerivedTarget, add_derived_targets
from mtlkit.data.schema import CategoricalFeature, SchemaSpec
from mtlkit.doctor import diagnose
from mtlkit.errors import ConfigError
from mtlkit.run import train_run
from mtlkit.tasks import Task


def _log(n: int, seed: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"user": rng.integers(0, 8, n).astype(str), "cat": rng.integers(0, 3, n).astype(str),
                     "ts": start + rng.integers(0, n // 3, n), "click": rng.integers(0, 2, n)})


def _brute(train: pa.Table, table: pa.Table, by, of, time, prior, kind, is_train: bool):
    t = {c: train[c].to_numpy(zero_copy_only=False) for c in train.column_names}
    q = {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}
    out = []
    for i in range(table.num_rows):
        # the prior's training rate leaves the row itself out, for training rows
        mean = (t["click"].sum() - q["click"][i]) / (train.num_rows - 1) if is_train else t["click"].mean()
        rows = np.ones(train.num_rows, bool)
        for c in by:
            rows &= t[c] == q[c][i]
        rows &= t[time] < q[time][i]
        n, s = rows.sum(), t[of][rows].sum() if of else 0
        out.append((s + prior * mean) / (n + prior) if kind == "rate" else np.log1p(n))
    return np.array(out)


@pytest.mark.parametrize("kind", ["rate", "popularity"])
def test_targets_count_only_strictly_earlier_training_rows(kind):
    train, validation = _log(300, 0), _log(100, 1, start=50)  # overlapping times: the rule, not the split, decides
    spec = DerivedTarget(name="y", kind=kind, by=["user", "cat"], of="click" if kind == "rate" else None, time="ts", prior=2.0)
    done = add_derived_targets({"train": train, "validation": validation}, [spec])
    for split, table in (("train", train), ("validation", validation)):
        expected = _brute(train, table, ["user", "cat"], spec.of, "ts", 2.0, kind, split == "train")
        np.testing.assert_allclose(done[split]["y"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_validation_and_test_labels_never_enter_and_a_row_never_sees_its_own_label():
    train, validation, test = _log(300, 0), _log(100, 1), _log(100, 2)
    for spec in (DerivedTarget(name="y", kind="rate", by=["user"], of="click", time="ts"),
                 DerivedTarget(name="y", kind="rate", by=["user"], of="click", training_only=True)):
        base = add_derived_targets({"train": train, "validation": validation, "test": test}, [spec])
        flipped = {s: t.set_column(t.column_names.index("click"), "click", pa.array(1 - t["click"].to_numpy()))
                   for s, t in (("validation", validation), ("test", test))}
        again = add_derived_targets({"train": train, **flipped}, [spec])
        for split in ("train", "validation", "test"):
            assert again[split]["y"].equals(base[split]["y"])
        own = train.set_column(train.column_names.index("click"), "click", pa.array(np.r_[1 - train["click"].to_numpy()[:1], train["click"].to_numpy()[1:]]))
        assert add_derived_targets({"train": own}, [spec])["train"]["y"][0] == base["train"]["y"][0]  # row 0's own label flipped


def test_training_only_is_leave_one_out_on_train_and_the_full_training_rate_elsewhere():
    train = pa.table({"u": ["a", "a", "a", "b"], "click": [1, 0, 1, 1]})
    validation = pa.table({"u": ["a", "b", "c"], "click": [0, 0, 0]})
    spec = DerivedTarget(name="r", kind="rate", by=["u"], of="click", training_only=True, prior=0.0)
    done = add_derived_targets({"train": train, "validation": validation}, [spec])
    assert done["train"]["r"].to_pylist() == pytest.approx([0.5, 1.0, 0.5, 2 / 3])  # b has no other row: the others' rate 2/3
    assert done["validation"]["r"].to_pylist() == pytest.approx([2 / 3, 1.0, 0.75])


def test_config_errors_before_anything_is_written(tmp_path):
    with pytest.raises(ValidationError, match="give `time`.*or `training_only: true`"):
        DerivedTarget(name="r", kind="rate", by=["u"], of="click")
    with pytest.raises(ValidationError, match="`of`"):
        DerivedTarget(name="r", kind="rate", by=["u"], time="ts")
    base = {"features": {"categorical": ["user"]}, "tasks": [{"name": "click", "kind": "binary"}, {"name": "uc", "kind": "regression"}],
            "train": {"epochs": 1, "progress": False}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**base, "data": {"train": "x.csv", "derived_targets": [{"name": "uc", "kind": "rate", "by": ["user"], "of": "click"}]}}))
    with pytest.raises(ConfigError, match=r"data\.derived_targets\.0.*give `time`"):
        load_config(path)
    config = RunConfig.model_validate({**base, "data": {"derived_targets": [{"name": "click", "kind": "popularity", "by": ["user"], "time": "ts"}]}})
    with pytest.raises(ConfigError, match=r"data\.derived_targets\[0\]\.name: 'click' is already a column"):
        train_run(config, tmp_path / "run", tables={"train": _log(200, 0), "validation": _log(50, 1)})
    assert not (tmp_path / "run").exists()


def test_a_run_trains_a_derived_target_as_an_auxiliary_task(tmp_path):
    config = RunConfig.model_validate({
        "data": {"derived_targets": [{"name": "uc_ctr", "kind": "rate", "by": ["user", "cat"], "of": "click", "time": "ts"}]},
        "features": {"categorical": ["user", "cat"]},
        "tasks": [{"name": "click", "kind": "binary"}, {"name": "uc_ctr", "kind": "regression"}],
        "train": {"epochs": 1, "progress": False}})
    summary = train_run(config, tmp_path / "run", tables={"train": _log(400, 0), "validation": _log(100, 1, start=150)})
    assert np.isfinite(summary["validation"]["uc_ctr"]["rmse"])


def test_the_doctor_warns_when_a_hand_made_distribution_target_leaks():
    train, validation = _log(300, 0), _log(100, 1)
    users = np.concatenate([train["user"].to_numpy(zero_copy_only=False), validation["user"].to_numpy(zero_copy_only=False)])
    clicks = np.concatenate([train["click"].to_numpy(), validation["click"].to_numpy()])
    rate = {u: clicks[users == u].mean() for u in np.unique(users)}  # by hand, over everything: leaks
    leaky = {s: t.append_column("u_ctr", pa.array([rate[u] for u in t["user"].to_pylist()])) for s, t in (("train", train), ("validation", validation))}
    tasks = [Task(name="click", kind="binary"), Task(name="u_ctr", kind="regression")]
    features = SchemaSpec(categorical=[CategoricalFeature(name="user"), CategoricalFeature(name="cat")])
    found = [f for f in diagnose(leaky, tasks, features).findings if f.check == "target_leakage"]
    assert len(found) == 1 and "per-(user) mean of 'click' over all splits" in found[0].message and found[0].severity.value == "warning"
    safe = add_derived_targets({"train": train, "validation": validation},
                               [DerivedTarget(name="u_ctr", kind="rate", by=["user"], of="click", time="ts")])
    assert not [f for f in diagnose(safe, tasks, features).findings if f.check == "target_leakage"]
