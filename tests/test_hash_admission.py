"""Hashed categorical features with min_freq admission, and the doctor's collision report."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
from rich.console import Console

from mtlkit.data.encoding import stable_hash
from mtlkit.data.schema import CategoricalFeature, FittedSchema, SchemaSpec, SequenceFeature
from mtlkit.doctor import Thresholds, diagnose, print_report
from mtlkit.doctor.hashing import collision_stats
from mtlkit.tasks import Task

BUCKETS = 97


def _bucket(value: str) -> int:
    return int(stable_hash(pa.array([value]))[0] % np.uint64(BUCKETS)) + 1


def _ids(fitted: FittedSchema, values: list) -> list[int]:
    return fitted.encode(pa.table({"user": values}), [], with_targets=False).inputs["categorical"][:, 0].tolist()


def test_min_freq_admits_only_frequent_hashed_values():
    train = pa.table({"user": ["a", "a", "a", "b", "c", "c", None]})
    admitted = SchemaSpec(categorical=[CategoricalFeature(name="user", hash_buckets=BUCKETS, min_freq=2)]).fit(train)
    plain = SchemaSpec(categorical=[CategoricalFeature(name="user", hash_buckets=BUCKETS)]).fit(train)
    values = ["a", "b", "c", "never", None]
    assert _ids(plain, values) == [_bucket("a"), _bucket("b"), _bucket("c"), _bucket("never"), 0]
    assert _ids(admitted, values) == [_bucket("a"), 0, _bucket("c"), 0, 0]  # rare and unseen share row 0
    assert admitted.cardinalities == plain.cardinalities == [BUCKETS + 1]


def test_admission_survives_schema_json_and_old_files_still_load(tmp_path):
    train = pa.table({"user": [f"u{i % 30}" for i in range(100)] + [f"rare{i}" for i in range(20)]})
    fitted = SchemaSpec(categorical=[CategoricalFeature(name="user", hash_buckets=BUCKETS, min_freq=3)]).fit(train)
    fitted.save(tmp_path / "schema.json")
    loaded = FittedSchema.load(tmp_path / "schema.json")
    values = ["u1", "u29", "rare3", "x"]
    assert _ids(loaded, values) == _ids(fitted, values) == [_bucket("u1"), _bucket("u29"), 0, 0]
    old = json.loads((tmp_path / "schema.json").read_text())
    del old["categorical"][0]["admitted"]  # a schema written before admission existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert _ids(FittedSchema.load(tmp_path / "old.json"), values) == [_bucket(v) for v in values]


def test_sequences_use_admission_of_their_own_or_shared_vocabulary():
    logs = pa.table({"item": ["x", "x", "y", "z"], "hist": ["y|w", "x|w", "", "q"], "tags": ["t|t|s", "t", "s|r", "t"]})
    spec = SchemaSpec(
        categorical=[CategoricalFeature(name="item", hash_buckets=BUCKETS, min_freq=2)],
        sequences=[SequenceFeature(name="hist", max_len=2, separator="|", share_vocabulary_with="item"),
                   SequenceFeature(name="tags", max_len=3, separator="|", hash_buckets=BUCKETS, min_freq=2)],
    )
    enc = spec.fit(logs).encode(logs, [], serving=False)
    # counted over the column and the histories together: x 3, y 2, w 2, z 1, q 1
    assert enc.inputs["categorical"][:, 0].tolist() == [_bucket("x"), _bucket("x"), _bucket("y"), 0]
    assert enc.inputs["seq:hist"].tolist() == [[_bucket("y"), _bucket("w")], [_bucket("x"), _bucket("w")], [0, 0], [0, 0]]
    t, s = _bucket("t"), _bucket("s")  # t 4, s 2, r 1
    assert enc.inputs["seq:tags"].tolist() == [[t, t, s], [t, 0, 0], [s, 0, 0], [t, 0, 0]]


def _brute_force(values: list[str], buckets: int, min_freq: int) -> tuple[float, float, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    admitted = [v for v, c in counts.items() if c >= min_freq]
    by_bucket: dict[int, list[str]] = {}
    for v in admitted:
        by_bucket.setdefault(int(stable_hash(pa.array([v]))[0] % np.uint64(buckets)), []).append(v)
    shared = [v for vs in by_bucket.values() if len(vs) > 1 for v in vs]
    return len(shared) / len(admitted), sum(counts[v] for v in shared) / len(values), len(by_bucket)


def test_collision_stats_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    values = [f"id{int(v)}" for v in rng.zipf(1.3, 3000) % 5000]
    for buckets, min_freq in ((500, 1), (500, 3), (20_000, 2)):
        stats = collision_stats(stable_hash(pa.array(values)), buckets, min_freq)
        value_share, row_share, occupied = _brute_force(values, buckets, min_freq)
        assert stats["value_collision_share"] == value_share
        assert stats["row_collision_share"] == row_share
        assert stats["occupied_buckets"] == occupied


def test_doctor_reports_collision_rate_per_hashed_field():
    rng = np.random.default_rng(1)
    train = pa.table({"user": [f"u{v}" for v in rng.integers(0, 2000, 4000)], "item": [f"i{v}" for v in rng.integers(0, 50, 4000)],
                      "device": ["a", "b"] * 2000, "click": rng.integers(0, 2, 4000)})
    spec = SchemaSpec.model_validate({"categorical": [{"name": "user", "hash_buckets": 100}, {"name": "item", "hash_buckets": 100_000},
                                                       {"name": "device"}]})
    report = diagnose({"train": train}, [Task(name="click", kind="binary")], spec, {"train": "log.csv"})
    stats = report.stats["hash_collisions"]
    assert sorted(stats) == ["item", "user"]  # hashed fields only
    assert stats["user"]["row_collision_share"] > 0.9 and stats["item"]["row_collision_share"] < 0.1
    warnings = [f for f in report.findings if f.check == "hash_collisions"]
    assert [f.column for f in warnings] == ["user"]
    assert warnings[0].message.startswith("log.csv: hashed feature 'user': ")
    relaxed = diagnose({"train": train}, [Task(name="click", kind="binary")], spec, thresholds=Thresholds(hash_collision_share=1.0))
    assert not [f for f in relaxed.findings if f.check == "hash_collisions"]
    console = Console(file=io.StringIO(), width=160, record=True)
    print_report(report, console)
    text = console.export_text()
    assert "bucket collisions" in text and "item" in text
