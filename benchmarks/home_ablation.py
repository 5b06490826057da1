"""HoME with and without each of its fixes on the synthetic short-video log, with the collapsed-expert share.

HoME (Wang et al., Kuaishou 2024) adds four fixes to a two-level MMoE: expert normalisation
(BN + Swish), hierarchy masks, feature gates and self-gates. Each variant here switches one
off (``-norm``, ``-mask``, ``-feature``, ``-self``), ``none`` switches all four off, and MMoE
with the same expert width is the reference. Tasks are grouped as the paper does: passive
(click, watch time) and interactive (like, share).

Reported per variant, mean ± std over seeds: test AUC of each binary task (test = the last 10%
of requests; early stopping on the 10% before them), and the *collapsed-expert share*: over
every gate, the share of its experts whose mean gate weight on the validation rows is below
1% (:func:`mtlkit.diagnostics.gates.gate_statistics`) — the expert collapse HoME targets.

    python benchmarks/home_ablation.py --rows 100000 --seeds 2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.datasets.shortvideo import load_shortvideo
from mtlkit.diagnostics.gates import gate_statistics
from mtlkit.models import ModelSpec, build_model
from mtlkit.train import Trainer, TrainSpec, evaluate

GROUPS = [["click", "watch_time"], ["like", "share"]]
FIXES = ["expert_norm", "hierarchy_mask", "feature_gates", "self_gates"]


def variants(width: int) -> dict[str, tuple[str, dict]]:
    base = {"expert_hidden": [width], "task_groups": GROUPS, "shared_experts": 2, "group_experts": 1, "experts_per_task": 1}
    out = {"home": ("home", base)}
    for fix, label in zip(FIXES, ["-norm", "-mask", "-feature", "-self"]):
        out[f"home {label}"] = ("home", {**base, fix: False})
    out["home none"] = ("home", {**base, **{fix: False for fix in FIXES}})
    out["mmoe"] = ("mmoe", {"experts": 6, "expert_hidden": [width]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=170)
    splits = load_shortvideo(rows=args.rows, seed=0)
    schema = splits.schema.fit(splits.train)
    tasks = splits.tasks
    encoded = {s: schema.encode(getattr(splits, s), tasks, s) for s in ("train", "validation", "test")}
    binary = [t.name for t in tasks if t.kind.value == "binary"]
    console.print(f"short-video log: {args.rows:,} rows ({len(encoded['train']):,} train); tasks {', '.join(t.name for t in tasks)}")
    rows = []
    for name, (backbone, options) in variants(args.width).items():
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = build_model(ModelSpec(backbone=backbone, options=options, embedding_dim=8, tower=[16]), schema, tasks)
            trainer = Trainer(model, tasks, build_balancer(BalancerSpec(), tasks),
                              TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=1, monitor="auc", progress=False))
            start = time.perf_counter()
            trainer.fit(encoded["train"].batches(args.batch_size, shuffle=True, seed=seed), encoded["validation"])
            test = evaluate(model, tasks, encoded["test"])
            stats = gate_statistics(model, encoded["validation"])
            row = {"variant": name, "seed": seed, **{f"auc_{t}": test[t]["auc"] for t in binary},
                   "collapsed": float(np.mean([s.collapsed_share for s in stats.values()])),
                   "seconds": time.perf_counter() - start}
            rows.append(row)
            console.print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    table = Table(title=f"HoME ablation, short-video log ({args.rows:,} rows, {args.epochs} epochs): test AUC and collapsed-expert share, "
                        f"mean ± std over {args.seeds} seeds")
    metrics = [k for k in rows[0] if k not in ("variant", "seed")]
    table.add_column("variant")
    for m in metrics:
        table.add_column(m, justify="right")
    summary: dict = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        values = {m: np.array([r[m] for r in rows if r["variant"] == name]) for m in metrics}
        summary[name] = {m: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0} for m, v in values.items()}
        table.add_row(name, *(f"{v.mean():.4f} ± {(v.std(ddof=1) if v.size > 1 else 0.0):.4f}" for v in values.values()))
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "home_ablation_summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
