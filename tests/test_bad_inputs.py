"""The bad-input corpus: config files, data files and CLI arguments (issue 12).

Each case is (description, input, exit code, words): the input is a CLI command plus the files it
needs, written into a copy of a small working directory that also holds a trained run. Every case
asserts the exact exit code, one ``error:`` line naming the key / file / column / row (``words``),
no traceback, and that the working directory is byte-for-byte what it was before the command:
nothing created (no run directory, no ``*.tmp``, no half-written output), nothing overwritten.

Runs in-process through typer's CliRunner; :func:`test_real_entry_point` runs a few through
``python -m mtlkit.cli``. Memory checks see a fixed 4 GiB machine, so they do not depend on the
host. Add a case for every bad-input bug found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mtlkit.cli import app

from conftest import click_table

runner = CliRunner()

CONFIG: dict[str, Any] = {
    "seed": 0,
    "data": {"train": "train.csv", "validation": "valid.csv", "test": "test.csv"},
    "features": {"categorical": ["user", "item"], "numeric": [{"name": "price", "transform": "log1p"}]},
    "tasks": [{"name": "click", "kind": "binary"}, {"name": "buy", "kind": "binary", "mask": {"column": "click", "equals": 1}}],
    "model": {"backbone": "shared_bottom", "options": {"hidden": [8]}, "embedding_dim": 4, "tower": [4]},
    "train": {"epochs": 1, "batch_size": 128, "lr": 0.01, "monitor": "auc"},
}
# A machine without the device asked for (a GPU machine lacks cuda:99).
NO_CUDA = "cuda" if not torch.cuda.is_available() else "cuda:99"
NO_MPS = "mps" if not torch.backends.mps.is_available() else "cuda:99"
UNWRITABLE = "/sys/mtlkit-test"  # EPERM even for root, who may write where the mode says no
TRAINED = "trained"  # the run directory every evaluate / predict case reads


# -- inputs -----------------------------------------------------------------------------------------

Setup = Callable[[Path], None]


def config(name: str = "bad.yaml", **changes: Any) -> Setup:
    """The base config with dotted keys changed (a value of ``DROP`` removes the key)."""
    def setup(root: Path) -> None:
        raw = json.loads(json.dumps(CONFIG))
        for key, value in changes.items():
            *parents, last = key.split("__")
            node = raw
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        (root / name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return setup


def text(name: str, content: str | bytes) -> Setup:
    def setup(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def both(*setups: Setup) -> Setup:
    def setup(root: Path) -> None:
        for s in setups:
            s(root)
    return setup


def table(name: str, change: Callable[[pa.Table], pa.Table], rows: int = 400, seed: int = 0) -> Setup:
    """A click table changed by ``change``, as CSV or Parquet (by suffix)."""
    def setup(root: Path) -> None:
        data = change(click_table(rows, seed))
        if name.endswith(".parquet"):
            pq.write_table(data, root / name)
        else:
            pacsv.write_csv(data, root / name)
    return setup


def column(name: str, values: Any) -> Callable[[pa.Table], pa.Table]:
    def change(t: pa.Table) -> pa.Table:
        array = pa.array(values(t.num_rows) if callable(values) else values)
        return t.set_column(t.column_names.index(name), name, array) if name in t.column_names else t.append_column(name, array)
    return change


def damaged_parquet(name: str, checksums: bool) -> Setup:
    """2,000 random bytes written over the middle of a Parquet file (the audit's experiment)."""
    def setup(root: Path) -> None:
        path = root / name
        pq.write_table(click_table(800, 0), path, compression="none", write_page_checksum=checksums)
        data = bytearray(path.read_bytes())
        middle = len(data) // 2 - 1000
        data[middle : middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    return setup


def in_run(name: str, content: Callable[[Path], bytes]) -> Setup:
    """Replace a file of the trained run (its bytes computed from the original)."""
    def setup(root: Path) -> None:
        path = root / TRAINED / name
        path.write_bytes(content(path))
    return setup


def truncated(path: Path) -> bytes:
    return path.read_bytes()[:1000]


def unfinished(name: str, *setups: Setup) -> Setup:
    """A copy of the trained run as a kill in its second epoch would leave it (no summary.json)."""
    def setup(root: Path) -> None:
        shutil.copytree(root / TRAINED, root / name)
        for gone in ("summary.json", "test_metrics.json"):
            (root / name / gone).unlink()
        for s in setups:
            s(root)
    return setup


def run_config(run: str, **changes: Any) -> Setup:
    """``bad.yaml``: the config.yaml of run directory ``run`` with top-level sections updated."""
    def setup(root: Path) -> None:
        raw = yaml.safe_load((root / run / "config.yaml").read_text())
        for key, value in changes.items():
            section, name = key.split("__")
            raw[section][name] = value
        (root / "bad.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return setup


class Evil:
    """A pickle that runs a shell command when loaded (weights_only must refuse it)."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def evil_checkpoint(path: Path) -> bytes:
    torch.save({"model": Evil()}, path)
    return path.read_bytes()


def other_model(path: Path) -> bytes:
    torch.save({"model": {"not.a.parameter": torch.zeros(3)}}, path)
    return path.read_bytes()


def alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


NOT_UTF8 = b"seed: 0\n# caf\xe9\n"
WEIGHTED = {"tasks": [{"name": "click", "kind": "binary", "weight_column": "w"}, {"name": "buy", "kind": "binary"}]}
REGRESSION = [{"name": "click", "kind": "binary"}, {"name": "watch", "kind": "regression"}]


# -- the corpus -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    description: str
    args: list[str]
    code: int
    words: tuple[str, ...]
    setup: Setup = field(default=lambda root: None)


def train(*extra: str, cfg: str = "bad.yaml") -> list[str]:
    return ["train", cfg, "--out", "runs/new", "--no-progress", *extra]


CASES = [
    # config files: values
    Case("unknown key", train(), 2, ("bad.yaml", "modle", "unknown key"), config(modle={})),
    Case("device that does not exist", train(), 2, ("train.device", "banana"), config(train__device="banana")),
    Case("CUDA device on a machine without it", train(), 2, ("train.device", NO_CUDA, "available here: cpu"), config(train__device=NO_CUDA)),
    Case("MPS device on a machine without it", train(), 2, ("train.device", NO_MPS, "available here: cpu"), config(train__device=NO_MPS)),
    Case("seed of 10^30", train(), 2, ("key 'seed'",), config(seed=10**30)),
    Case("negative seed", train(), 2, ("key 'seed'",), config(seed=-1)),
    Case("split seed of 2^64", train(), 2, ("data.split.seed",), config(data={"train": "train.csv", "split": {"seed": 2**64}})),
    Case("embedding_dim of ten million", train(), 2, ("model.embedding_dim", "10000000", "too large"), config(model__embedding_dim=10_000_000)),
    Case("hash_buckets of 10^11", train(), 2, ("features.categorical.0.hash_buckets", "too large"),
         config(features__categorical=[{"name": "user", "hash_buckets": 100_000_000_000}, "item"])),
    Case("a million experts", train(), 2, ("model.options.experts", "1000000", "too large"),
         config(model={"backbone": "mmoe", "options": {"experts": 1_000_000}})),
    Case("batch of a trillion rows", train(), 2, ("train.batch_size", "too large"), config(train__batch_size=10**12)),
    Case("clip with low above high", train(), 2, ("features.numeric.0.clip", "low < high"),
         config(features__numeric=[{"name": "price", "clip": [10, 0]}])),
    Case("clip of NaN", train(), 2, ("features.numeric.0.clip",), text("bad.yaml", yaml.safe_dump(CONFIG).replace(
        "- name: price\n", "- name: price\n    clip: [.nan, 1]\n"))),
    Case("negative learning rate", train(), 2, ("key 'train.lr'",), config(train__lr=-1)),
    Case("unknown backbone", train(), 2, ("mmmoe",), config(model__backbone="mmmoe")),
    Case("dc2vr rank at the tower width", train(), 2, ("model.relations.dc2vr.rank", "below the tower widths"),
         config(model__relations={"dc2vr": {"task": "buy", "sources": ["click"], "rank": 4}})),
    Case("dc2vr unknown source task", train(), 2, ("model.relations.dc2vr.sources", "'clik'"),
         config(model__relations={"dc2vr": {"task": "buy", "sources": ["clik"]}})),
    Case("fp16 on mps", train(), 2, ("train", "'fp16' trains on cpu or cuda"), config(train__precision="fp16", train__device="mps")),
    Case("an unknown precision", train(), 2, ("train.precision", "fp8"), config(train__precision="fp8")),
    # config files: bytes and YAML
    Case("duplicated key", train(), 2, ("key 'seed' is given twice", "lines 1 and"),
         text("bad.yaml", "seed: 0\n" + yaml.safe_dump({k: v for k, v in CONFIG.items() if k != "seed"}) + "seed: 3\n")),
    Case("duplicated nested key", train(), 2, ("key 'lr' is given twice",),
         text("bad.yaml", yaml.safe_dump(CONFIG).replace("  lr: 0.01\n", "  lr: 0.01\n  lr: 0.5\n"))),
    Case("UTF-16 config", train(), 2, ("bad.yaml", "UTF-16"), text("bad.yaml", yaml.safe_dump(CONFIG).encode("utf-16"))),
    Case("invalid UTF-8 in the config", train(), 2, ("bad.yaml", "not UTF-8", "line 2"), text("bad.yaml", NOT_UTF8)),
    Case("20,000 nested brackets", train(), 2, ("bad.yaml", "nested more than", "line 1"), text("bad.yaml", "a: " + "[" * 20_000 + "\n")),
    Case("alias bomb", train(), 2, ("bad.yaml", "aliases"), text("bad.yaml", alias_bomb())),
    Case("malformed YAML", train(), 2, ("bad.yaml", "malformed YAML at line 2"), text("bad.yaml", "data: [unclosed\n")),
    Case("empty config", train(), 2, ("bad.yaml", "empty"), text("bad.yaml", "")),
    Case("config is a list", train(), 2, ("bad.yaml", "expected a mapping"), text("bad.yaml", "- a\n")),
    Case("config is a directory", train(cfg="adir"), 2, ("adir", "is a directory"), text("adir/x", "")),
    Case("missing config", train(cfg="nope.yaml"), 2, ("nope.yaml", "no such file")),
    # data files at train
    Case("invalid UTF-8 in a CSV text column", train(), 2, ("broken.csv", "column 'user'", "data row 3", "UTF-8"),
         both(config(data__train="broken.csv"), text("broken.csv", b"user,item,price,click,buy\nu1,1,2.0,1,0\nu2,2,3.0,0,0\nu\xff3,3,4.0,1,1\n"))),
    Case("duplicated CSV column", train(), 2, ("twice.csv", "column 'user' appears 2 times"),
         both(config(data__train="twice.csv"), text("twice.csv", "user,item,price,click,buy,user\nu1,1,2.0,1,0,u1\nu2,2,3.0,0,0,u2\n"))),
    Case("negative sample weight", train(), 2, ("weighted.csv", "weight column 'w'", "data row 6", "-1.0"),
         both(config(tasks=WEIGHTED["tasks"], data__train="weighted.csv"),
              table("weighted.csv", column("w", lambda n: np.where(np.arange(n) == 5, -1.0, 1.0))),
              table("valid.csv", column("w", lambda n: np.ones(n)), 300, 1), table("test.csv", column("w", lambda n: np.ones(n)), 300, 2))),
    Case("one class only in train", train(), 2, ("allzero.csv", "task 'click'", "no positive label"),
         both(config(data__train="allzero.csv", tasks=[{"name": "click", "kind": "binary"}]),
              table("allzero.csv", column("click", lambda n: np.zeros(n, np.int64))))),
    Case("all-NaN regression label", train(), 2, ("nanlabel.csv", "task 'watch'", "no labelled row"),
         both(config(data__train="nanlabel.csv", tasks=REGRESSION, train__monitor="loss"),
              table("nanlabel.csv", column("watch", lambda n: np.full(n, np.nan))),
              table("valid.csv", column("watch", lambda n: np.ones(n)), 300, 1), table("test.csv", column("watch", lambda n: np.ones(n)), 300, 2))),
    Case("regression label of 1e308", train(), 2, ("huge.csv", "label column 'watch'", "data row 4", "1e+308"),
         both(config(data__train="huge.csv", tasks=REGRESSION, train__monitor="loss"),
              table("huge.csv", column("watch", lambda n: np.where(np.arange(n) == 3, 1e308, 1.0))),
              table("valid.csv", column("watch", lambda n: np.ones(n)), 300, 1), table("test.csv", column("watch", lambda n: np.ones(n)), 300, 2))),
    Case("text where a label must be a number", train(), 2, ("words.csv", "'click'", "numeric"),
         both(config(data__train="words.csv"), table("words.csv", column("click", lambda n: ["yes"] * n)))),
    Case("Parquet with 2,000 bytes overwritten", train(), 2, ("damaged.parquet", "damaged Parquet file", "column 'price'", "data row"),
         both(config(data__train="damaged.parquet"), damaged_parquet("damaged.parquet", checksums=False))),
    Case("Parquet with checksums, overwritten", train(), 2, ("damaged.parquet", "checksum"),
         both(config(data__train="damaged.parquet"), damaged_parquet("damaged.parquet", checksums=True))),
    Case("text file named .parquet", train(), 2, ("fake.parquet", "cannot be read as Parquet"),
         both(config(data__train="fake.parquet"), text("fake.parquet", "user,click\nu1,1\n"))),
    Case("missing feature column", train(), 2, ("train.csv", "missing column 'shop'"), config(features__categorical=["user", "shop"])),
    Case("header without rows", train(), 2, ("test.csv", "has a header but no rows"),
         both(config(), text("test.csv", "user,item,price,click,buy\n"))),
    # train --out
    Case("--out is a file", train(), 2, ("--out runs/new", "is a file"), both(config(), text("runs/new", "x"))),
    Case("--out under a file", ["train", "bad.yaml", "--out", "afile/run"], 2, ("--out afile/run", "afile is a file"),
         both(config(), text("afile", "x"))),
    Case("--out not writable", ["train", "bad.yaml", "--out", f"{UNWRITABLE}/run"], 2, ("--out", UNWRITABLE, "cannot write"), config()),
    Case("--out holds a finished run", ["train", "bad.yaml", "--out", TRAINED], 2, (TRAINED, "finished run", "--overwrite"), config()),
    Case("--out holds someone's files", train(), 2, ("runs/new", "not an mtlkit run", "--overwrite"),
         both(config(), text("runs/new/notes.txt", "mine"))),
    Case("--out holds an unfinished run of another config", ["train", "bad.yaml", "--out", "half"], 2,
         ("half", "another config", "key 'train.lr': 0.01 there, 0.5 now", "--overwrite"),
         both(unfinished("half"), run_config("half", train__lr=0.5))),
    Case("resume from a truncated last.pt", ["train", "bad.yaml", "--out", "half"], 2, ("half/last.pt", "truncated", "--overwrite"),
         both(unfinished("half", in_run("../half/last.pt", truncated)), run_config("half"))),
    Case("unfinished run with a damaged config.yaml", ["train", "bad.yaml", "--out", "half"], 2, ("half", "config.yaml is damaged"),
         both(config(), unfinished("half", text("half/config.yaml", b"\xff\xfe"))),),
    # evaluate
    Case("truncated best.pt", ["evaluate", TRAINED], 2, ("best.pt", "truncated", "--overwrite"), in_run("best.pt", truncated)),
    Case("best.pt that runs os.system", ["evaluate", TRAINED], 2, ("best.pt", "refused", "posix.system"), in_run("best.pt", evil_checkpoint)),
    Case("best.pt of another model", ["evaluate", TRAINED], 2, ("best.pt", "does not fit"), in_run("best.pt", other_model)),
    Case("garbage schema.json", ["evaluate", TRAINED], 2, ("schema.json", "not a readable schema", "--overwrite"),
         in_run("schema.json", lambda p: b"garbage{")),
    Case("schema.json of another program", ["evaluate", TRAINED], 2, ("schema.json", "unsupported schema format"),
         in_run("schema.json", lambda p: b'{"hello": 1}')),
    Case("config.yaml in UTF-16", ["evaluate", TRAINED], 2, ("config.yaml", "UTF-16"), in_run("config.yaml", lambda p: p.read_text().encode("utf-16"))),
    Case("not a run", ["evaluate", "."], 2, ("not a trained mtlkit run",)),
    Case("--json into an unwritable directory", ["evaluate", TRAINED, "--json", f"{UNWRITABLE}/e.json"], 2, ("--json", "cannot write")),
    Case("--json is a directory", ["evaluate", TRAINED, "--json", TRAINED], 2, ("--json", "is a directory")),
    Case("--json under a file", ["evaluate", TRAINED, "--json", "train.csv/e.json"], 2, ("--json", "train.csv is a file")),
    Case("--data with invalid UTF-8", ["evaluate", TRAINED, "--data", "broken.csv"], 2, ("broken.csv", "column 'user'", "data row 1"),
         text("broken.csv", b"user,item,price,click,buy\nu\xff1,1,2.0,1,0\n")),
    # predict
    Case("predict on invalid UTF-8", ["predict", TRAINED, "broken.csv", "--out", "p.csv"], 2, ("broken.csv", "column 'user'", "data row 2"),
         text("broken.csv", b"user,item,price\nu1,1,2.0\nu\xff2,2,3.0\n")),
    Case("predict: a numeric column holds text", ["predict", TRAINED, "drift.csv", "--out", "p.csv"], 2, ("drift.csv", "'price'", "numeric"),
         text("drift.csv", "user,item,price\nu1,1,cheap\n")),
    Case("predict into its own input", ["predict", TRAINED, "test.csv", "--out", "test.csv"], 2, ("--out test.csv", "is the input file")),
    Case("predict into its input by another path", ["predict", TRAINED, "test.csv", "--out", f"../{'{cwd}'}/test.csv"], 2, ("is the input file",)),
    Case("predict into the run's files", ["predict", TRAINED, "test.csv", "--out", f"{TRAINED}/metrics.csv"], 2, ("metrics.csv", "run's own")),
    Case("predict into an unknown format", ["predict", TRAINED, "test.csv", "--out", "p.xlsx"], 2, ("--out p.xlsx", "unknown output format '.xlsx'")),
    Case("predict --out a directory", ["predict", TRAINED, "test.csv", "--out", TRAINED], 2, ("--out trained", "is a directory")),
    Case("predict --out under a file", ["predict", TRAINED, "test.csv", "--out", "train.csv/p.csv"], 2, ("train.csv is a file",)),
    Case("predict --out not writable", ["predict", TRAINED, "test.csv", "--out", f"{UNWRITABLE}/p.csv"], 2, ("--out", "cannot write")),
    Case("predict --keep a missing column", ["predict", TRAINED, "test.csv", "--out", "p.csv", "--keep", "shop"], 2, ("test.csv", "'shop'")),
    Case("predict without a feature column", ["predict", TRAINED, "nouser.csv", "--out", "p.csv"], 2, ("nouser.csv", "missing column 'user'"),
         text("nouser.csv", "item,price\n1,2.0\n")),
    Case("predict --task on a tabular run", ["predict", TRAINED, "test.csv", "--out", "p.csv", "--task", "click"], 2, ("--task",)),
    Case("predict a missing file", ["predict", TRAINED, "nope.csv", "--out", "p.csv"], 2, ("nope.csv", "no such file")),
    # doctor / export
    Case("doctor --out not writable", ["doctor", "bad.yaml", "--out", f"{UNWRITABLE}/d.json"], 2, ("cannot write",), config()),
    Case("doctor on a duplicated key", ["doctor", "bad.yaml"], 2, ("bad.yaml", "'seed' is given twice"),
         text("bad.yaml", "seed: 0\nseed: 1\n")),
    Case("export of a truncated best.pt", ["export", TRAINED, "--format", "torchscript", "--out", "exp"], 2, ("best.pt", "truncated"),
         in_run("best.pt", truncated)),
]


# -- running a case -----------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with a hash of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """train/valid/test CSVs, the base config and a trained run."""
    root = tmp_path_factory.mktemp("corpus")
    for name, seed, n in (("train.csv", 0, 400), ("valid.csv", 1, 300), ("test.csv", 2, 300)):
        pacsv.write_csv(click_table(n, seed), root / name)
    config()(root)
    result = runner.invoke(app, ["train", str(root / "bad.yaml"), "--out", str(root / TRAINED), "--no-progress"])
    assert result.exit_code == 0, result.output
    (root / "bad.yaml").unlink()
    return root


@pytest.fixture
def workdir(base, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "work"
    shutil.copytree(base, root)
    monkeypatch.chdir(root)
    monkeypatch.setattr("mtlkit.sizing.available_memory", lambda device: 4 * 2**30)  # the same verdict on every host
    return root


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 45 and len({c.description for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_bad_input(case: Case, workdir: Path):
    case.setup(workdir)
    before = snapshot(workdir)
    args = [a.replace("{cwd}", workdir.name) for a in case.args]
    result = runner.invoke(app, args)
    output = result.output.strip()
    assert result.exit_code == case.code, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no exception escaped the CLI
    assert "Traceback" not in output and output.startswith("error:") and len(output.splitlines()) == 1, output
    for word in case.words:
        assert word in output, f"{word!r} not in {output!r}"
    assert snapshot(workdir) == before  # nothing created, nothing changed, nothing left half-written


REAL = ["duplicated key", "predict into its own input", "best.pt that runs os.system"]


def test_real_entry_point(workdir: Path):
    """A few cases through ``python -m mtlkit.cli``: exit code 2, one line on stderr, nothing on stdout."""
    for case in (c for c in CASES if c.description in REAL):
        case.setup(workdir)
        before = snapshot(workdir)
        process = subprocess.run([sys.executable, "-m", "mtlkit.cli", *case.args], capture_output=True, text=True, cwd=workdir)
        assert process.returncode == case.code, (case.description, process.stderr)
        assert process.stdout == "" and process.stderr.startswith("error:") and len(process.stderr.strip().splitlines()) == 1, process.stderr
        assert all(word in process.stderr for word in case.words), (case.description, process.stderr)
        assert snapshot(workdir) == before
        assert not (workdir / "pwned").exists()  # the os.system pickle never ran


def test_nlp_readers_name_the_line_of_bytes_that_are_not_utf8(tmp_path):
    from mtlkit.errors import DataError
    from mtlkit.nlp.readers import read

    (tmp_path / "dev.tsv").write_bytes(b"sentence\tlabel\nfine\t1\nbad \xff text\t0\n")
    with pytest.raises(DataError, match=r"dev.tsv: line 3: bytes that are not UTF-8 text \(byte 0xff\)"):
        read("glue_tsv", tmp_path / "dev.tsv")
    with pytest.raises(DataError, match="is a directory"):
        read("glue_tsv", tmp_path)
