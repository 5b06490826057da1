"""Data-parallel throughput: ``mtlkit train`` under torchrun with 1 and 2 processes, side by side.

Census-Income group 1 (199,523 training rows), MMoE (8 experts of [64], towers [32]), global batch
1,024, for --epochs epochs, three layouts on one machine, one after another:

* 1 process × 1 thread (the reference),
* 1 process × T threads (T = --threads-per-process × 2: intra-op parallelism),
* 2 processes × 1 thread each under ``torchrun --nproc-per-node 2`` (gloo all-reduce on CPU).

Figures: training samples/second as the trainer measures it (``summary.json``:
``train_samples_per_second``, rows of all ranks over the training loop's wall time, evaluation
excluded), the ratio to the reference, and the validation AUC of the last epoch (the runs see the
same global batches, so it should agree to a few 1e-4).

    python benchmarks/distributed.py --epochs 2     # writes distributed.json to --out
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/census_income_kdd"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmark-results/distributed"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = {"seed": 0,
            "data": {"dataset": "census_income", "dataset_options": {"group": 1, "root": str(args.root.resolve())}},
            "model": {"backbone": "mmoe", "options": {"experts": 8, "expert_hidden": [64]}, "embedding_dim": 8, "tower": [32]},
            "train": {"epochs": args.epochs, "batch_size": 1024, "lr": 0.001, "monitor": "auc", "patience": None, "progress": False}}
    layouts = [("1 process x 1 thread", 1, 1), (f"1 process x {args.processes} threads", 1, args.processes),
               (f"{args.processes} processes x 1 thread (torchrun)", args.processes, 1)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    results = []
    for label, processes, threads in layouts:
        name = f"p{processes}_t{threads}"
        config = {**base, "train": {**base["train"], "threads": threads}}
        (args.out / f"{name}.yaml").write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "mtlkit.cli", "train", str(args.out / f"{name}.yaml"), "--out", str(args.out / name), "--overwrite", "--no-progress"]
        done = subprocess.run(command, env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{label} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        summary = json.loads((args.out / name / "summary.json").read_text())
        results.append({"layout": label, "processes": summary.get("processes", processes), "threads": threads,
                        "samples_per_second": summary["train_samples_per_second"],
                        "income_auc": summary["validation"]["income"]["auc"], "marital_auc": summary["validation"]["marital"]["auc"]})
        print(f"{label}: {results[-1]['samples_per_second']:,.0f} samples/s", flush=True)
    reference = results[0]["samples_per_second"]
    print("\n| layout | samples/s | × 1 process, 1 thread | income AUC | marital AUC |\n|---|---|---|---|---|")
    for r in results:
        r["speedup"] = r["samples_per_second"] / reference
        print(f"| {r['layout']} | {r['samples_per_second']:,.0f} | {r['speedup']:.2f} | {r['income_auc']:.4f} | {r['marital_auc']:.4f} |")
    print(f"\nmachine: {os.cpu_count()} CPUs; epochs {args.epochs}; global batch 1024")
    (args.out / "distributed.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
