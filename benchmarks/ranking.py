"""Ranking toolkit acceptance on a synthetic short-video log (mtlkit.data.datasets.shortvideo).

Three comparisons, each measured against the generator's ground truth on the test requests
(the last 10% of requests; validation = the 10% before them, used for early stopping only):

1. **Position bias.** MMoE and PLE with and without the YouTube shallow tower (position and
   device as bias features). Serving predictions never see the position; they are scored
   against ``true_relevance`` (the position-free click probability): NDCG@10 per request with
   the true relevance as gain, and the Pearson correlation. Observed-click AUC is shown too.
2. **Focal vs BCE** on the share task (≈0.1% positives): AUC, logloss, adaptive ECE and the ratio
   of mean prediction to the observed rate (1 = calibrated in the mean).
3. **ESMM vs a naive CVR model.** Conversion = like after a click (``true_like_prob`` is
   P(like | click) on every impression). ESMM learns it over the entire space through
   pCTR × pCVR; the naive model is trained on clicked impressions only. Both are scored on
   *all* test impressions: AUC against labels drawn from ``true_like_prob`` (fixed seed) and
   the correlation with it, plus the usual AUC on clicked impressions.

4. **Counterfactual CVR: ESMM vs ESCM² (IPS, DR) vs DCMT vs DC2VR** (alone, under ESMM, and the
   same towers without the intervention as its ablation), scored as in 3 on all test impressions
   against ``true_like_prob`` (plus AUC on the *unclicked* test impressions alone,
   where the models must extrapolate). Run it on both generators: ``--selection-bias 0`` (the
   conversion function is the same in and outside the clicked space) and e.g. ``3`` (outside the
   clicked space conversion depends on relevance the other way: the selection-bias mechanism
   these models target; see :class:`mtlkit.data.datasets.shortvideo.ShortVideoSpec`).

    python benchmarks/ranking.py --rows 2000000 --seeds 2
    python benchmarks/ranking.py --rows 300000 --experiments counterfactual --seeds 3 --selection-bias 3
    python benchmarks/ranking.py --rows 200000 --epochs 1 --experiments bias   # a quick look

Writes ``ranking.csv`` (one row per run) and ``ranking_summary.json`` to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.datasets.shortvideo import generate_shortvideo, load_shortvideo
from mtlkit.metrics import auc, ece, logloss, ndcg
from mtlkit.models import ModelSpec, build_model
from mtlkit.tasks import Task, TaskMask
from mtlkit.train import Trainer, TrainSpec, predict_logits

BACKBONES = {"mmoe": {"experts": 4, "expert_hidden": [64]},
             "ple": {"experts_per_task": 1, "shared_experts": 2, "levels": 2, "expert_hidden": [64]}}


def fit(spec: ModelSpec, tasks: list[Task], data, seed: int, args, train=None, validation=None):
    """Train with early stopping on validation; return the model (best epoch restored)."""
    torch.manual_seed(seed)
    schema = data["schema"]
    model = build_model(spec, schema, tasks)
    trained = [t for t in tasks if t.name in getattr(model, "loss_task_names", [t.name for t in tasks])]
    train_table = train if train is not None else schema.encode(data["splits"].train, tasks, "train")
    valid_table = validation if validation is not None else schema.encode(data["splits"].validation, tasks, "validation")
    trainer = Trainer(model, tasks, build_balancer(BalancerSpec(), trained),
                      TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=1,
                                monitor=args.monitor(tasks), progress=False, threads=args.threads))
    result = trainer.fit(train_table.batches(args.batch_size, shuffle=True, seed=seed), valid_table)
    return model.eval(), result


def serving_predictions(model, tasks, data) -> dict[str, np.ndarray]:
    """Test-split predictions as served: encoded without labels, so bias features are missing."""
    table = data["schema"].encode(data["splits"].test, tasks, "test", with_targets=False)
    logits = predict_logits(model, table, 16384)
    return {t.name: t.predict_for_metrics(logits[t.name]).numpy() for t in tasks}


def position_bias(data, seed, args) -> list[dict]:
    tasks = data["splits"].tasks
    test = data["splits"].test
    truth = test.column("true_relevance").to_numpy()
    requests = test.column("request_id").to_numpy()
    clicks = test.column("click").to_numpy()
    rows = []
    for backbone, options in BACKBONES.items():
        for tower in (False, True):
            spec = ModelSpec(backbone=backbone, options=options, embedding_dim=8, tower=[32],
                             shallow_tower={"tasks": ["click"], "hidden": [16]} if tower else None)
            start = time.perf_counter()
            model, result = fit(spec, tasks, data, seed, args)
            p = serving_predictions(model, tasks, data)["click"]
            rows.append({"experiment": "bias", "model": f"{backbone}{' + shallow tower' if tower else ''}", "seed": seed,
                         "epochs": len(result.history), "seconds": round(time.perf_counter() - start),
                         "ndcg@10 (true relevance)": ndcg(p, truth, requests, k=10),
                         "pearson (true relevance)": float(np.corrcoef(p, truth)[0, 1]),
                         "click auc (observed)": auc(p, clicks)})
    return rows


def focal_vs_bce(data, seed, args) -> list[dict]:
    labels = data["splits"].test.column("share").to_numpy()
    rows = []
    for loss, options in (("bce", {}), ("focal", {"gamma": 2.0, "alpha": 0.25})):
        tasks = [t if t.name != "share" else Task(**{**t.model_dump(), "loss": loss, "loss_options": options})
                 for t in data["splits"].tasks]
        spec = ModelSpec(backbone="mmoe", options=BACKBONES["mmoe"], embedding_dim=8, tower=[32])
        start = time.perf_counter()
        model, result = fit(spec, tasks, data, seed, args)
        p = serving_predictions(model, tasks, data)["share"]
        rows.append({"experiment": "share loss", "model": f"mmoe, share with {loss}", "seed": seed,
                     "epochs": len(result.history), "seconds": round(time.perf_counter() - start),
                     "share auc": auc(p, labels), "share logloss": logloss(p, labels), "share ece": ece(p, labels),
                     "mean pred / rate": float(p.mean() / max(labels.mean(), 1e-12))})
    return rows


def esmm_vs_naive(data, seed, args) -> list[dict]:
    splits = data["splits"]
    test = splits.test
    truth = test.column("true_like_prob").to_numpy()
    sampled = np.random.default_rng(12345).random(truth.shape[0]) < truth  # counterfactual conversions, all impressions
    clicked = test.column("click").to_numpy() > 0
    likes = test.column("like").to_numpy()
    rows = []

    def score(name, p_cvr, result, start):
        rows.append({"experiment": "cvr", "model": name, "seed": seed, "epochs": len(result.history),
                     "seconds": round(time.perf_counter() - start),
                     "cvr auc (all impressions, truth)": auc(p_cvr, sampled),
                     "pearson (true cvr)": float(np.corrcoef(p_cvr, truth)[0, 1]),
                     "cvr auc (clicked, observed)": auc(p_cvr[clicked], likes[clicked])})

    esmm_tasks = [Task(name="ctr", kind="binary", label="click"),
                  Task(name="cvr", kind="binary", label="like", mask=TaskMask(column="click")),
                  Task(name="ctcvr", kind="binary", label="like")]
    spec = ModelSpec(backbone="shared_bottom", options={"hidden": [128]}, embedding_dim=8, tower=[32],
                     relations={"esmm": [{"ctr": "ctr", "cvr": "cvr", "ctcvr": "ctcvr"}]})
    start = time.perf_counter()
    model, result = fit(spec, esmm_tasks, data, seed, args)
    score("ESMM (entire space)", serving_predictions(model, esmm_tasks, data)["cvr"], result, start)

    naive = [Task(name="cvr", kind="binary", label="like", mask=TaskMask(column="click"))]
    spec = ModelSpec(backbone="shared_bottom", options={"hidden": [128]}, embedding_dim=8, tower=[32])
    schema = data["schema"]
    train = schema.encode(splits.train, naive, "train")
    train = train.subset(train.masks["cvr"].nonzero().squeeze(1))  # clicked impressions only
    start = time.perf_counter()
    model, result = fit(spec, naive, data, seed, args, train=train)
    score("naive CVR (clicked rows)", serving_predictions(model, naive, data)["cvr"], result, start)
    return rows


def counterfactual_cvr(data, seed, args) -> list[dict]:
    splits = data["splits"]
    test = splits.test
    truth = test.column("true_like_prob").to_numpy()
    sampled = np.random.default_rng(12345).random(truth.shape[0]) < truth
    clicked = test.column("click").to_numpy() > 0
    likes = test.column("like").to_numpy()
    tasks = [Task(name="ctr", kind="binary", label="click"),
             Task(name="cvr", kind="binary", label="like", mask=TaskMask(column="click")),
             Task(name="ctcvr", kind="binary", label="like")]
    funnel = {"ctr": "ctr", "cvr": "cvr", "ctcvr": "ctcvr"}
    variants = {"ESMM": {"esmm": [funnel]},
                "ESCM2-IPS": {"escm2": {**funnel, "estimator": "ips"}},
                "ESCM2-DR": {"escm2": {**funnel, "estimator": "dr"}},
                "DCMT": {"dcmt": funnel},
                # TorchEasyRec's DC2VR: the click tower intervenes on the CVR tower (cvr on clicked rows; ctcvr its own head)
                "DC2VR": {"dc2vr": {"task": "cvr", "sources": ["ctr"], "rank": 4}},
                "DC2VR ablation: no intervention": {},
                "ESMM+DC2VR": {"esmm": [funnel], "dc2vr": {"task": "cvr", "sources": ["ctr"], "rank": 4}}}
    rows = []
    for name, relations in variants.items():
        spec = ModelSpec(backbone="shared_bottom", options={"hidden": [128]}, embedding_dim=8, tower=[32], relations=relations)
        start = time.perf_counter()
        model, result = fit(spec, tasks, data, seed, args)
        p = serving_predictions(model, tasks, data)["cvr"]
        rows.append({"experiment": "counterfactual", "model": name, "seed": seed, "epochs": len(result.history),
                     "seconds": round(time.perf_counter() - start),
                     "cvr auc (all impressions, truth)": auc(p, sampled),
                     "cvr auc (unclicked, truth)": auc(p[~clicked], sampled[~clicked]),
                     "pearson (true cvr)": float(np.corrcoef(p, truth)[0, 1]),
                     "cvr auc (clicked, observed)": auc(p[clicked], likes[clicked]),
                     "mean pcvr / mean true cvr": float(p.mean() / truth.mean())})
    return rows


EXPERIMENTS = {"bias": position_bias, "share": focal_vs_bce, "cvr": esmm_vs_naive, "counterfactual": counterfactual_cvr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--log", type=Path, default=None, help="Parquet log to reuse (default: generated into --out)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    parser.add_argument("--selection-bias", type=float, default=0.0,
                        help="generator option: conversion outside the clicked space (0 = the original generator)")
    args = parser.parse_args()
    args.monitor = lambda tasks: "auc"  # mean validation AUC over the binary tasks
    torch.set_num_threads(args.threads)
    console = Console(width=170)
    args.out.mkdir(parents=True, exist_ok=True)

    suffix = f"_sb{args.selection_bias:g}" if args.selection_bias else ""
    log = args.log or args.out / f"shortvideo_{args.rows}{suffix}.parquet"
    if not log.exists():
        generate_shortvideo(log, args.rows, seed=0, progress=True, selection_bias=args.selection_bias)
    splits = load_shortvideo(log)
    data = {"splits": splits, "schema": splits.schema.fit(splits.train, str(log))}
    console.print(f"{log}: {splits.train.num_rows:,} train / {splits.validation.num_rows:,} validation / {splits.test.num_rows:,} test rows")

    rows: list[dict] = []
    for name in args.experiments:
        for seed in range(args.seeds):
            for row in EXPERIMENTS[name](data, seed, args):
                rows.append(row)
                console.print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                with open(args.out / "ranking.csv", "w", newline="") as f:  # rewritten per run: nothing lost
                    fields = list(dict.fromkeys(k for r in rows for k in r))
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)

    summary: dict = {}
    for name in args.experiments:
        runs = [r for r in rows if r["experiment"] == rows_key(name)]
        metrics = [k for k in runs[0] if isinstance(runs[0][k], float)]
        table = Table(title=f"{rows_key(name)}: mean ± std over {args.seeds} seeds (test requests)")
        table.add_column("model")
        for m in metrics:
            table.add_column(m, justify="right")
        for model in dict.fromkeys(r["model"] for r in runs):
            values = {m: np.array([r[m] for r in runs if r["model"] == model]) for m in metrics}
            summary.setdefault(rows_key(name), {})[model] = {m: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}
                                                            for m, v in values.items()}
            table.add_row(model, *(f"{v.mean():.4f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.4f}" for v in values.values()))
        console.print(table)
    console.print(f"generator selection_bias = {args.selection_bias:g}; CPU threads = {args.threads}")
    (args.out / "ranking_summary.json").write_text(json.dumps(summary, indent=1))


def rows_key(experiment: str) -> str:
    return {"bias": "bias", "share": "share loss", "cvr": "cvr", "counterfactual": "counterfactual"}[experiment]


if __name__ == "__main__":
    main()
