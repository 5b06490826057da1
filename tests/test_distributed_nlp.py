"""NLP runs under torchrun: ``mtlkit train CONFIG`` with 2 gloo processes matches 1 process.

A tiny BERT (built here, no download) without dropout — dropout masks depend on how rows are
split over ranks, so with dropout the runs are equal only in distribution — trains two tasks
(SST-2 classification, STS-B regression) with MT-DNN's proportional sampler for 2 epochs. The
global batches are the sampler's (a function of seed, epoch and step), each rank keeps its half
of every batch, gradients are averaged: the best checkpoint of the 2-process run equals the
1-process one's to ATOL (float summation order), and only rank 0 writes files. The same holds with
per-task LoRA adapters on the frozen encoder (``encoder: {adapters: lora}``): the frozen weights have
no gradient on any rank, the adapters' are averaged; and with one adapter for both tasks (``groups``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import SHARED_DATA
from tiny_bert import save_tiny_bert

NLP = SHARED_DATA / "nlp"
ATOL = 1e-4


ADAPTERS = {"full": {}, "lora": {"adapters": "lora", "r": 4, "alpha": 8},
            "lora_group": {"adapters": "lora", "r": 4, "alpha": 8, "groups": {"glue": ["sst2", "stsb"]}}}


@pytest.fixture(scope="module", params=list(ADAPTERS))
def runs(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"ddp_nlp_{request.param}")
    save_tiny_bert(tmp / "bert", [(NLP / "sst2" / "train.tsv", 40), (NLP / "stsb" / "sts-train.tsv", 40)], dropout=0.0, max_positions=64)
    rows = {"train": 40, "validation": 16}
    config = {
        "seed": 0, "encoder": {"name": str(tmp / "bert"), **ADAPTERS[request.param]},
        "sampling": {"strategy": "proportional"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "patience": None, "threads": 1, "monitor": "loss",
                  "precision": "fp32"},  # an fp32 comparison, whatever "auto" picks here
        "tasks": [
            {"name": "sst2", "kind": "classification", "max_length": 32, "head": {"dropout": 0.0},
             "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                      "format": "glue_tsv", "max_rows": rows}},
            {"name": "stsb", "kind": "regression", "max_length": 32, "head": {"dropout": 0.0},
             "data": {"train": str(NLP / "stsb" / "sts-train.tsv"), "validation": str(NLP / "stsb" / "sts-dev.tsv"),
                      "format": "sts", "max_rows": rows}},
        ],
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    for world in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                   "-m", "mtlkit.cli", "train", str(tmp / "run.yaml"), "--out", str(tmp / f"w{world}"), "--no-progress"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return tmp


def test_two_processes_match_one_under_torchrun(runs):
    one = torch.load(runs / "w1" / "best.pt", weights_only=True)["model"]
    two = torch.load(runs / "w2" / "best.pt", weights_only=True)["model"]
    assert one.keys() == two.keys()
    worst = max((one[k].double() - two[k].double()).abs().max().item() for k in one)
    print("NLP, 2 ranks vs 1, max |Δ| of the best weights:", worst)
    assert worst <= ATOL
    a, b = (json.loads((runs / f"w{w}" / "summary.json").read_text()) for w in (1, 2))
    assert (a["processes"], b["processes"]) == (1, 2)  # the second run really was data-parallel
    assert b["epochs_run"] == a["epochs_run"] == 2
    for task in ("sst2", "stsb"):
        assert b["validation"][task]["loss"] == pytest.approx(a["validation"][task]["loss"], abs=1e-4)


def test_only_rank_zero_wrote_the_run_files(runs):
    names = {p.name for p in (runs / "w2").iterdir()}
    assert {"config.yaml", "best.pt", "last.pt", "metrics.jsonl", "summary.json"} <= names
    assert len((runs / "w2" / "metrics.jsonl").read_text().splitlines()) == 2  # one line per epoch, not per rank
