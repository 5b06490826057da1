"""MT-DNN on four GLUE tasks (Liu et al., ACL 2019), CPU-sized: single-task fine-tuning against
multi-task training followed by per-task fine-tuning, at the same budget, over several seeds.

Tasks and splits (files under --data, the layout of ``../shared/data/nlp``):

| task | train | validation (model selection) | test (reported) | metric |
|---|---|---|---|---|
| SST-2 | train.tsv, seeded subsample (--rows) | dev.tsv, seeded 872 | test.tsv (872 = GLUE dev) | accuracy |
| RTE | train.tsv, seeded subsample | val.tsv (363) | dev.tsv (277 = GLUE dev) | accuracy |
| MRPC | msr_paraphrase_train.txt less a seeded 10 %, subsample | that 10 % | msr_paraphrase_test.txt (1,725) | accuracy, F1 |
| STS-B | sts-train.tsv, subsample | sts-dev.tsv, seeded 500 | sts-test.tsv (1,379) | Pearson, Spearman |

Arms, per seed (subsamples depend on the seed, and are the same in every arm):

* ``single``: the MiniLM encoder fine-tuned on one task for ``E`` epochs; best epoch on the task's
  validation metric.
* ``mtl``: one shared encoder, four heads, MT-DNN's proportional sampling (each task's batches once
  per epoch, shuffled), ``E - F`` epochs; best epoch on the summed validation loss. Its test
  figures are reported too (the multi-task model without fine-tuning).
* ``mtdnn``: the ``mtl`` model fine-tuned on each task alone for ``F`` epochs (``init_from``);
  best epoch on the task's validation metric.
* ``lora`` (``--arms ... lora``): ``mtl``'s set-up for all ``E`` epochs, but the encoder frozen and
  one LoRA adapter per task (``encoder: {adapters: lora, r: --lora-r, alpha: 2r}``, learning rate
  ``--lora-lr``); reported next to ``mtl`` with trained parameters, checkpoint size and wall time.
* ``full`` (``--arms ... full``): the same multi-task run as ``lora`` (``E`` epochs, best epoch on the
  summed validation loss) with the whole encoder fine-tuned at ``--lr``: adapters against full
  fine-tuning at equal epochs and data. A second table gives, per arm, the trained parameters, the
  size of ``best.pt`` and the wall time (sums over an arm's runs of one seed, then mean over seeds).

``--eval-rows N`` caps every validation and test split at a seeded subsample of ``N`` rows (the same
in every arm of a seed): a CPU-sized run, not the GLUE protocol; say so when quoting its figures.

Same budget: every arm passes over each task's training rows ``E`` times (single: E; mtdnn: E - F
multi-task + F alone), at the same batch size, learning rate and schedule.

    python benchmarks/nlp_glue.py --seeds 0 1          # writes nlp_glue.csv / nlp_glue.md to --out
    python benchmarks/nlp_glue.py --arms full lora --rows 200 200 200 200 --eval-rows 300 --epochs 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

from nlp_common import markdown_table, mean_std, report, run_config, write_csv  # noqa: E402

METRICS = {"sst2": ["accuracy"], "rte": ["accuracy"], "mrpc": ["accuracy", "f1"], "stsb": ["pearson", "spearman"]}
SELECT = {"sst2": "sst2/accuracy", "rte": "rte/accuracy", "mrpc": "mrpc/f1", "stsb": "stsb/pearson"}


def task_defs(data: Path, rows: dict[str, int], eval_rows: int | None = None) -> dict[str, dict]:
    defs = {
        "sst2": {"name": "sst2", "kind": "classification", "max_length": 64,
                 "data": {"train": str(data / "sst2/train.tsv"), "validation": str(data / "sst2/dev.tsv"),
                          "test": str(data / "sst2/test.tsv"), "format": "glue_tsv",
                          "max_rows": {"train": rows["sst2"], "validation": 872}}},
        "rte": {"name": "rte", "kind": "classification", "max_length": 128,
                "data": {"train": str(data / "rte/train.tsv"), "validation": str(data / "rte/val.tsv"),
                         "test": str(data / "rte/dev.tsv"), "format": "glue_tsv",
                         "options": {"columns": ["index", "sentence1", "sentence2", "label"]},
                         "max_rows": {"train": rows["rte"]}}},
        "mrpc": {"name": "mrpc", "kind": "classification", "max_length": 128, "metrics": ["accuracy", "f1"],
                 "data": {"train": str(data / "mrpc/msr_paraphrase_train.txt"), "test": str(data / "mrpc/msr_paraphrase_test.txt"),
                          "format": "mrpc", "split": {"validation": 0.1, "seed": 0}, "max_rows": {"train": rows["mrpc"]}}},
        "stsb": {"name": "stsb", "kind": "regression", "max_length": 128,
                 "data": {"train": str(data / "stsb/sts-train.tsv"), "validation": str(data / "stsb/sts-dev.tsv"),
                          "test": str(data / "stsb/sts-test.tsv"), "format": "sts",
                          "max_rows": {"train": rows["stsb"], "validation": 500}}},
    }
    if eval_rows is not None:
        for d in defs.values():
            d["data"]["max_rows"].update(validation=min(eval_rows, d["data"]["max_rows"].get("validation", eval_rows)), test=eval_rows)
    return defs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/nlp"))
    parser.add_argument("--encoder", default="minilm", help="minilm, a local save_pretrained folder, or a cached hub id")
    parser.add_argument("--pooling", default="auto", choices=["auto", "cls", "mean"],
                        help="auto (default): the encoder's own pooling, mean for MiniLM; cls: the figures before mean pooling became the default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", nargs="+", default=list(METRICS), choices=list(METRICS))
    parser.add_argument("--rows", type=int, nargs=4, default=[3000, 1000, 1000, 1500], metavar=("SST2", "RTE", "MRPC", "STSB"),
                        help="training rows kept per task (seeded subsample)")
    parser.add_argument("--epochs", type=int, default=3, help="E: passes over each task's rows in every arm")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="F: of E, the per-task fine-tuning epochs of MT-DNN")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="train.precision (auto: bf16 where the CPU/GPU runs it natively, else fp32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=["single", "mtdnn"], choices=["single", "mtdnn", "lora", "full"])
    parser.add_argument("--eval-rows", type=int, default=None, help="cap validation and test splits (seeded subsample; not GLUE's protocol)")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=5e-4, help="adapters train at a higher rate than full fine-tuning")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results/nlp_glue"))
    args = parser.parse_args()
    if not 0 < args.finetune_epochs < args.epochs:
        parser.error("--finetune-epochs must be between 1 and --epochs - 1")
    args.out.mkdir(parents=True, exist_ok=True)
    defs = task_defs(args.data.resolve(), dict(zip(METRICS, args.rows)), args.eval_rows)

    rows_of = dict(zip(METRICS, args.rows))
    walls: dict[str, float] = {}

    def config(seed: int, tasks: list[str], epochs: int, monitor: str, **extra) -> dict:
        steps = epochs * sum(-(-rows_of[t] // args.batch_size) for t in tasks)  # (MRPC's is a slight overestimate)
        return {"seed": seed, "encoder": {"name": args.encoder, "pooling": args.pooling}, "balancer": {"name": "fixed"},
                "sampling": {"strategy": "proportional"},
                "train": {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": steps // 10,
                          "monitor": monitor, "patience": None, "threads": args.threads, "precision": args.precision},
                "tasks": [defs[t] for t in tasks], **extra}

    precisions: set[str] = set()  # what train.precision resolved to (auto: bf16 where the CPU runs it natively)

    def run(raw: dict, directory: Path) -> dict:
        summary = run_config(raw, directory, Path.cwd())
        precisions.add(summary.get("precision", "fp32"))
        return summary

    records: list[dict] = []
    costs: list[dict] = []  # per seed and arm: trained parameters, best.pt bytes, wall seconds (sums over the arm's runs)

    def cost(seed: int, arm: str, directory: Path, summary: dict) -> None:
        costs.append({"seed": seed, "arm": arm, "trained": summary.get("trained_parameters", summary["parameters"]),
                      "bytes": (directory / "best.pt").stat().st_size, "wall": summary.get("wall_seconds", 0.0)})
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        if "single" in args.arms:
            for task in args.tasks:
                s = run(config(seed, [task], args.epochs, SELECT[task]), args.out / f"seed{seed}" / f"single_{task}")
                records += [{"seed": seed, "arm": "single", "task": task, "metric": m, "value": s["test"][task][m]} for m in METRICS[task]]
                walls["single"] = walls.get("single", 0.0) + s.get("wall_seconds", 0.0)
                cost(seed, "single", args.out / f"seed{seed}" / f"single_{task}", s)
        if "mtdnn" in args.arms:
            mtl_dir = args.out / f"seed{seed}" / "mtl"
            s = run(config(seed, args.tasks, args.epochs - args.finetune_epochs, "loss"), mtl_dir)
            records += [{"seed": seed, "arm": "mtl", "task": t, "metric": m, "value": s["test"][t][m]} for t in args.tasks for m in METRICS[t]]
            walls["mtdnn"] = walls.get("mtdnn", 0.0) + s.get("wall_seconds", 0.0)
            for task in args.tasks:
                s = run(config(seed, [task], args.finetune_epochs, SELECT[task], init_from=str(mtl_dir.resolve())),
                        args.out / f"seed{seed}" / f"mtdnn_{task}")
                records += [{"seed": seed, "arm": "mtdnn", "task": task, "metric": m, "value": s["test"][task][m]} for m in METRICS[task]]
                walls["mtdnn"] += s.get("wall_seconds", 0.0)
        if "lora" in args.arms:
            lora_dir = args.out / f"seed{seed}" / "lora"
            raw = config(seed, args.tasks, args.epochs, "loss")
            raw["encoder"].update(adapters="lora", r=args.lora_r, alpha=2 * args.lora_r)
            raw["train"]["lr"] = args.lora_lr
            s = run(raw, lora_dir)
            records += [{"seed": seed, "arm": "lora", "task": t, "metric": m, "value": s["test"][t][m]} for t in args.tasks for m in METRICS[t]]
            walls["lora"] = walls.get("lora", 0.0) + s.get("wall_seconds", 0.0)
            cost(seed, "lora", lora_dir, s)
            mtl_summary = args.out / f"seed{seed}" / "mtl" / "summary.json"
            for arm, directory in (("lora", lora_dir), ("mtl", mtl_summary.parent)):
                if (directory / "best.pt").exists():
                    summary = json.loads((directory / "summary.json").read_text())
                    print(f"  {arm}: trained parameters {summary.get('trained_parameters', summary['parameters']):,} of {summary['parameters']:,}; "
                          f"best.pt {(directory / 'best.pt').stat().st_size / 2**20:.1f} MiB; {summary.get('wall_seconds', 0):.0f} s", flush=True)
        if "full" in args.arms:
            full_dir = args.out / f"seed{seed}" / "full"
            s = run(config(seed, args.tasks, args.epochs, "loss"), full_dir)
            records += [{"seed": seed, "arm": "full", "task": t, "metric": m, "value": s["test"][t][m]} for t in args.tasks for m in METRICS[t]]
            walls["full"] = walls.get("full", 0.0) + s.get("wall_seconds", 0.0)
            cost(seed, "full", full_dir, s)
        write_csv(args.out / "nlp_glue.csv", records)

    arms = [a for a in ("single", "mtl", "mtdnn", "full", "lora") if any(r["arm"] == a for r in records)]
    rows = []
    for task in args.tasks:
        for metric in METRICS[task]:
            values = {a: [r["value"] for r in records if (r["arm"], r["task"], r["metric"]) == (a, task, metric)] for a in arms}
            delta = (f"{statistics.mean(values['mtdnn']) - statistics.mean(values['single']):+.4f}"
                     if values.get("mtdnn") and values.get("single") else "—")
            rows.append([task, metric, *[mean_std(values[a]) for a in arms], delta])
    table = markdown_table(["task", "test metric", *arms, "mtdnn − single"], rows)
    footer = (f"seeds {args.seeds}; train rows {rows_of}; E = {args.epochs}, F = {args.finetune_epochs}; "
              f"wall seconds over all runs: {', '.join(f'{a} {s:.0f}' for a, s in walls.items())} (mtdnn includes its mtl stage)")
    if costs:
        per_seed: dict[tuple[str, int], dict[str, float]] = {}
        for c in costs:
            total = per_seed.setdefault((c["arm"], c["seed"]), {"trained": 0, "bytes": 0, "wall": 0.0})
            for key in total:
                total[key] += c[key]
        cost_rows = [[arm, f"{statistics.mean(v['trained'] for (a, _), v in per_seed.items() if a == arm):,.0f}",
                      f"{statistics.mean(v['bytes'] for (a, _), v in per_seed.items() if a == arm) / 2**20:.2f}",
                      f"{statistics.mean(v['wall'] for (a, _), v in per_seed.items() if a == arm):.0f}"]
                     for arm in dict.fromkeys(a for a, _ in per_seed)]
        table += "\n\n" + markdown_table(["arm", "trained parameters", "best.pt MiB", "wall s (per seed)"], cost_rows)
    footer += (f"; eval rows {args.eval_rows or 'GLUE splits'}; threads {args.threads}; "
               f"precision {'/'.join(sorted(precisions)) or args.precision}; CPU {cpu_model()}")
    report(args.out / "nlp_glue.md", table, footer)


if __name__ == "__main__":
    main()
