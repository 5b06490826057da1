"""Behaviour-sequence poolings and auxiliary tasks on the short-video log with drifting interests.

DIN vs DIEN (α = 0) vs DIEN + auxiliary loss (α = 1, Eq. 1) vs DIEN + aux + next-item LM vs
DIEN + aux + replaced-item detection (the sequence objectives of ``model.sequence_objectives``)
vs DIEN + aux + the user's click rate on the candidate's category as a regression target
(``data.derived_targets``, strictly earlier training rows), and mean pooling as the order-blind floor. The log is :mod:`mtlkit.data.datasets.shortvideo` with
``interest_drift`` > 0: histories walk over categories and the LAST category adds to the
relevance logit — the mechanism DIEN models. Without drift the history is a bag of the user's
static tastes, which the user id already carries, and a sequence model has nothing beyond DIN
to learn (say so rather than tune until it wins).

Every model: shared-bottom (64) + towers (32), embedding 8, tasks click / like / share, fixed
equal weights (auxiliary tasks at their configured weight), Adam 2e-3, early stopping on the mean
validation AUC (the last 10% of requests before test); scored once on the test requests (the
last 10%): AUC and GAUC per task and NDCG@10 of the click score against ``true_relevance``.

    OMP_NUM_THREADS=1 python benchmarks/sequence_aux.py --rows 200000 --seeds 3

Prints the CPU model, the scale and per-run wall time; writes ``sequence_aux.csv`` and
``sequence_aux_summary.json`` to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.datasets.shortvideo import shortvideo_schema, shortvideo_table, shortvideo_tasks, split_by_request
from mtlkit.data.derived_targets import DerivedTarget, add_derived_targets
from mtlkit.data.schema import SequenceFeature
from mtlkit.metrics import auc, ndcg
from mtlkit.metrics.functions import gauc
from mtlkit.models import ModelSpec, build_model
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, predict_logits

TASKS = ("click", "like", "share")


def variants(args) -> dict[str, tuple[dict, list[dict]]]:
    """name → (sequence feature options, model.sequence_objectives)."""
    din = {"pooling": "din", "target": "item_id"}
    dien = {"pooling": "dien", "target": "item_id"}
    aux = {**dien, "dien": {"aux_weight": 1.0, "negatives": args.negatives}}
    return {
        "mean": ({"pooling": "mean"}, []),
        "DIN": (din, []),
        "DIEN": ({**dien, "dien": {"aux_weight": 0.0}}, []),
        "DIEN + aux": (aux, []),
        "DIEN + aux + next-item LM": (aux, [{"sequence": "hist_items", "objective": "next_item", "weight": args.lm_weight}]),
        "DIEN + aux + replaced-item": (aux, [{"sequence": "hist_items", "objective": "replaced_item", "weight": args.lm_weight}]),
        # + a distribution target: the user's click rate on the candidate's category from strictly earlier training rows
        "DIEN + aux + user×category CTR target": (aux, [{"derived": "user_category_ctr"}]),
    }


RATE = DerivedTarget(name="user_category_ctr", kind="rate", by=["user_id", "category"], of="click", time="request_id", prior=5.0)




def run(name: str, sequence: dict, objectives: list[dict], splits: dict, seed: int, args) -> dict:
    tasks = shortvideo_tasks(TASKS)
    if objectives and "derived" in objectives[0]:
        objectives = []
        splits = add_derived_targets(splits, [RATE])
        tasks = [*tasks, Task(name=RATE.name, kind="regression", loss_weight=args.lm_weight)]
    base = shortvideo_schema(max_history=args.history)
    features = base.model_copy(update={"sequences": [SequenceFeature(name="hist_items", max_len=args.history,
                                                                     share_vocabulary_with="item_id", **sequence)]})
    schema = features.fit(splits["train"], "train")
    torch.manual_seed(seed)
    spec = ModelSpec(backbone="shared_bottom", options={"hidden": [64]}, embedding_dim=8, tower=[32], sequence_objectives=objectives)
    model = build_model(spec, schema, tasks)
    balancer = build_balancer(BalancerSpec(), [*tasks, *model.auxiliary_tasks()])
    trainer = Trainer(model, tasks, balancer, TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=1,
                                                        monitor="auc", progress=False, threads=args.threads))
    start = time.perf_counter()
    result = trainer.fit(schema.encode(splits["train"], tasks, "train").batches(args.batch_size, shuffle=True, seed=seed),
                         schema.encode(splits["validation"], tasks, "validation"))
    seconds = time.perf_counter() - start
    test = splits["test"]
    logits = predict_logits(model.eval(), schema.encode(test, tasks, "test", with_targets=False), 16384)
    requests = test.column("request_id").to_numpy()
    row: dict = {"model": name, "seed": seed, "epochs": len(result.history), "best epoch": result.best_epoch.get("model"),
                 "seconds": round(seconds, 1)}
    for task in tasks[: len(TASKS)]:
        p = task.predict_for_metrics(logits[task.name]).numpy()
        labels = test.column(task.name).to_numpy()
        row[f"{task.name} auc"] = auc(p, labels)
        row[f"{task.name} gauc"] = gauc(p, labels, requests)
    click = tasks[0].predict_for_metrics(logits["click"]).numpy()
    row["ndcg@10 (true relevance)"] = ndcg(click, test.column("true_relevance").to_numpy(), requests, k=10)
    row["val auc (mean)"] = float(np.mean([result.best_results[t]["auc"] for t in TASKS]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=None, help="default rows // 20: few impressions per user, so the history matters")
    parser.add_argument("--drift", type=float, default=1.5, help="shortvideo interest_drift (0: static tastes)")
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--negatives", choices=["vocabulary", "histories"], default="vocabulary")
    parser.add_argument("--lm-weight", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    users = args.users or max(1000, args.rows // 20)
    start = time.perf_counter()
    table = shortvideo_table(args.rows, seed=0, n_users=users, interest_drift=args.drift, history_length=args.history)
    splits = split_by_request(table)
    print(f"CPU: {cpu_model()}, torch threads {args.threads}; log: {args.rows:,} rows, {users:,} users, interest_drift {args.drift}, "
          f"history {args.history}; {splits['train'].num_rows:,} train / {splits['validation'].num_rows:,} validation / "
          f"{splits['test'].num_rows:,} test rows (generated in {time.perf_counter() - start:.1f} s)", flush=True)
    chosen = variants(args)
    names = args.models or list(chosen)
    rows: list[dict] = []
    for seed in range(args.seeds):
        for name in names:
            row = run(name, *chosen[name], splits, seed, args)
            rows.append(row)
            print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
            with open(args.out / "sequence_aux.csv", "w", newline="") as f:  # rewritten per run: nothing lost
                writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
                writer.writeheader()
                writer.writerows(rows)
    metrics = [k for k in rows[0] if isinstance(rows[0][k], float) and k != "seconds"]
    summary: dict = {}
    print(f"\nmean ± std over {args.seeds} seeds (test requests; selection on validation only)")
    print(f"{'model':30s}" + "".join(f"{m:>26s}" for m in metrics))
    for name in names:
        values = {m: np.array([r[m] for r in rows if r["model"] == name]) for m in metrics}
        summary[name] = {m: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0} for m, v in values.items()}
        print(f"{name:30s}" + "".join(f"{v.mean():>17.4f} ± {summary[name][m]['std']:.4f}" for m, v in values.items()))
    (args.out / "sequence_aux_summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                                    "cpu": cpu_model(), "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
