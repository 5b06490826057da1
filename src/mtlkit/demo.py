"""``mtlkit demo``: the MMoE paper's synthetic experiment (§5.1) at demo scale.

For task correlations 0.5, 0.9 and 1.0 the demo trains the single-task baseline and every
registered multi-task backbone on the same data, selects each on validation loss, and reports
test MSE per task with the MTL gain over single-task (PLE paper, Eq. 11; positive = MTL helps).
It writes ``demo_results.csv`` and ``demo_results.png`` (loss against correlation, the layout of
the MMoE paper's Figure 4).
"""

from __future__ import annotations

import csv
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.datasets.synthetic import mmoe_synthetic, mmoe_synthetic_schema, mmoe_synthetic_tasks
from mtlkit.data.split import seeded_split
from mtlkit.metrics import mtl_gain
from mtlkit.models import BACKBONES, ModelSpec, build_model
from mtlkit.train import Trainer, TrainSpec, evaluate

CORRELATIONS = (0.5, 0.9, 1.0)
BASELINE = "single_task"
# Comparable capacity at d = 100 (MMoE paper §5.1): shared-bottom 113 units ≈ 8 experts × 16.
# Backbones not listed here run with their defaults.
_MOE = {"experts": 8, "expert_hidden": [16]}
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "single_task": {"hidden": [113]},
    "shared_bottom": {"hidden": [113]},
    "omoe": _MOE,
    "mmoe": _MOE,
    "dselect_k": _MOE,
    "youtube_mmoe": _MOE,
    "cgc": {"experts_per_task": 3, "shared_experts": 2, "expert_hidden": [16]},
    "ple": {"experts_per_task": 3, "shared_experts": 2, "expert_hidden": [16], "levels": 2},
}


def demo_backbones() -> list[str]:
    # Multi-scenario backbones (STAR) need a scenario column the demo's data does not have.
    return [BASELINE] + [name for name in BACKBONES.names() if name != BASELINE and not BACKBONES.get(name).needs_scenario]


def _train_one(backbone: str, p: float, seed: int, n: int, epochs: int) -> dict[str, Any]:
    """One training run; self-contained so that it can run in a worker process."""
    torch.set_num_threads(1)  # tiny models: a second thread costs more in synchronisation than it gains
    parts = seeded_split(mmoe_synthetic(n=n, d=100, p=p, seed=seed), {"validation": 0.1, "test": 0.1}, seed=seed)
    tasks = mmoe_synthetic_tasks()
    schema = mmoe_synthetic_schema(100).fit(parts["train"])
    train, validation, test = (schema.encode(parts[split], tasks) for split in ("train", "validation", "test"))
    torch.manual_seed(seed)
    spec = ModelSpec(backbone=backbone, options=DEMO_OPTIONS.get(backbone, {}), tower=[8])
    model = build_model(spec, schema, tasks)
    train_spec = TrainSpec(epochs=epochs, batch_size=128, lr=3e-3, patience=5, progress=False)
    trainer = Trainer(model, tasks, build_balancer(BalancerSpec(), tasks), train_spec)
    trainer.fit(train.batches(train_spec.batch_size, shuffle=True, seed=seed), validation)
    results = evaluate(model, tasks, test)
    return {"correlation": p, "backbone": backbone, "seed": seed, **{t.name: results[t.name]["loss"] for t in tasks}}


def synthetic_experiment(
    backbones: list[str],
    seeds: int,
    n: int,
    epochs: int,
    correlations: tuple[float, ...] = CORRELATIONS,
    console: Console | None = None,
    workers: int = 2,
) -> list[dict[str, Any]]:
    """Test MSE per task for every (correlation, seed, backbone); the same data for every backbone.

    Runs are independent, so ``workers`` processes train them side by side (one thread each).
    """
    console = console or Console()
    jobs = [(b, p, s, n, epochs) for p in correlations for s in range(seeds) for b in backbones]
    rows: list[dict[str, Any]] = []
    with console.status("training") as status:
        if workers <= 1:
            for job in jobs:
                rows.append(_train_one(*job))
                status.update(f"[{len(rows)}/{len(jobs)}] done")
        else:
            context = multiprocessing.get_context("spawn")  # no forked OpenMP state
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for row in pool.map(_train_one, *zip(*jobs)):
                    rows.append(row)
                    status.update(f"[{len(rows)}/{len(jobs)}] correlation {row['correlation']}, {row['backbone']}, seed {row['seed']}")
    return rows


def run_demo(out: Path, seeds: int = 1, quick: bool = False, console: Console | None = None) -> list[dict[str, Any]]:
    console = console or Console()
    backbones = demo_backbones()
    rows = synthetic_experiment(backbones, seeds, n=3000 if quick else 10_000, epochs=8 if quick else 40, console=console)
    summary = summarise(rows, backbones)
    _print(summary, console)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(summary, out / "demo_results.csv")
    plot(summary, backbones, out / "demo_results.png")
    console.print(f"wrote {out / 'demo_results.csv'} and {out / 'demo_results.png'}")
    return summary


def summarise(rows: list[dict[str, Any]], backbones: list[str], baseline: str = BASELINE) -> list[dict[str, Any]]:
    summary = []
    for p in CORRELATIONS:
        mean = {}
        for backbone in backbones:
            runs = [r for r in rows if r["correlation"] == p and r["backbone"] == backbone]
            mean[backbone] = {t: float(np.mean([r[t] for r in runs])) for t in ("y1", "y2")}
            for t in ("y1", "y2"):
                mean[backbone][f"std_{t}"] = float(np.std([r[t] for r in runs], ddof=1)) if len(runs) > 1 else 0.0
        for backbone in backbones:
            m, base = mean[backbone], mean[baseline]
            summary.append({
                "correlation": p, "backbone": backbone,
                "test_mse_y1": m["y1"], "test_mse_y2": m["y2"], "mean_test_mse": (m["y1"] + m["y2"]) / 2,
                "std_y1": m["std_y1"], "std_y2": m["std_y2"], "seeds": len([r for r in rows if r["correlation"] == p and r["backbone"] == backbone]),
                "gain_y1": mtl_gain(m["y1"], base["y1"], higher_is_better=False),
                "gain_y2": mtl_gain(m["y2"], base["y2"], higher_is_better=False),
            })
    return summary


def _print(summary: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="Synthetic MMoE-paper data: test MSE (lower is better), MTL gain vs single-task")
    for column in ("correlation", "backbone", "y1 MSE", "y2 MSE", "gain y1", "gain y2"):
        table.add_column(column, justify="right" if column not in ("backbone",) else "left")
    for row in summary:
        table.add_row(
            f"{row['correlation']:.1f}", row["backbone"], f"{row['test_mse_y1']:.4f}", f"{row['test_mse_y2']:.4f}",
            "—" if row["backbone"] == BASELINE else f"{100 * row['gain_y1']:+.1f}%",
            "—" if row["backbone"] == BASELINE else f"{100 * row['gain_y2']:+.1f}%",
        )
    console.print(table)


def write_csv(summary: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)


def plot(summary: list[dict[str, Any]], backbones: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    colours = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]  # matplotlib stub: get_cmap returns Colormap; "tab20" is a ListedColormap
    for ax, task in zip(axes, ("y1", "y2")):
        for i, backbone in enumerate(backbones):
            rows = [r for r in summary if r["backbone"] == backbone]
            style = {"color": "black", "linestyle": "--"} if backbone == BASELINE else {"color": colours[(2 * i) % 20 + (2 * i) // 20]}
            ax.errorbar([r["correlation"] for r in rows], [r[f"test_mse_{task}"] for r in rows],
                        yerr=[r[f"std_{task}"] for r in rows], marker="o", capsize=3, label=backbone, **style)
        ax.set_xlabel("task correlation p")
        ax.set_ylabel(f"test MSE, task {task}")
        ax.set_xticks(CORRELATIONS)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("mtlkit demo: multi-task backbones vs single-task (MMoE paper §5.1 setting)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
