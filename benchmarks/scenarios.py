"""Multi-scenario backbones on a synthetic multi-scenario log: STAR vs MetaHeac vs PEPNet vs HoME vs MMoE, per-scenario AUC.

The generator (:func:`multi_scenario_log`, documented there) draws AliExpress-like impressions
from ``--scenarios`` countries of unequal size (the last ones small, where sharing matters). Click
and conversion depend on the same user-item affinity and numeric features through weights that are
partly shared and partly scenario-specific (``--specific``: the scale of the scenario-specific
part). Conversion is observed only after a click, and both tasks are scored over all impressions
(CTR and CTCVR AUC, as the AliExpress benchmarks of STAR/MetaHeac-style papers report them).

Every backbone trains with the same protocol: Adam, early stopping on the validation AUC, the
test split scored once at the end; ``model.scenario: country``. Printed: per backbone the
parameter count, the test AUC per scenario and task (mean ± std over seeds), pooled AUC, wall
time and epochs per run, next to the oracle (the generator's true probabilities: a ceiling).

    python benchmarks/scenarios.py --seeds 3 --rows 60000 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pyarrow as pa
import torch
from machine import cpu_model

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.metrics.functions import auc
from mtlkit.models import ModelSpec, build_model
from mtlkit.run import count_parameters
from mtlkit.scenarios import scenario_metrics
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, evaluate

TASKS = [Task(name="click", kind="binary"), Task(name="conversion", kind="binary")]
SPEC = SchemaSpec(categorical=[CategoricalFeature(name=c) for c in ("country", "user", "item", "category")],
                  numeric=[NumericFeature(name=f"x{i}") for i in range(4)])
# Equal-ish capacity: 64-unit experts / layers, a 32-unit tower each.
BACKBONES = {
    "mmoe": {"experts": 4, "expert_hidden": [64]},
    "star": {"hidden": [64, 32], "auxiliary": [16]},
    "metaheac": {"experts": 4, "expert_hidden": [64], "critics": 3, "critic_hidden": [32]},
    # PEPNet: EPNet's gate reads the country, PPNet's the user and item ids (the paper's domain / prior sides)
    "pepnet": {"hidden": [64], "domain_features": ["country"], "prior_features": ["user", "item"], "gate_hidden": 32},
    "home": {"expert_hidden": [64], "shared_experts": 2, "experts_per_task": 1},
}


def multi_scenario_log(rows: int, seed: int, n_scenarios: int = 4, specific: float = 1.0, universe_seed: int = 0) -> pa.Table:
    """``rows`` impressions of ``n_scenarios`` countries with shares ∝ 2^-s (the last ones small).

    The universe (``universe_seed``: users, items, weights) is fixed; ``seed`` draws impressions.
    ``u_user, v_item ∈ R⁴`` (N(0, 1/2)); items have one of 20 categories with a category bias. For
    country ``s``: ``click logit = a_s·⟨u, v⟩ + (w + specific·δ_s)ᵀx + β_s + b_category`` with
    ``a_s = 1 + specific·N(0, 0.5)`` and ``δ_s ~ N(0, 1)``, ``x ~ N(0, I₄)``; conversion given a
    click: ``logit = c_s·⟨u, v'⟩ + (w' + specific·δ'_s)ᵀx − 1.5`` with ``v'`` a second item vector.
    ``conversion`` = click and convert (scored over all impressions, like CTCVR).
    """
    universe = np.random.default_rng(universe_seed)
    n_users, n_items, n_categories = 400, 600, 20
    u = universe.normal(0, 0.7, (n_users, 4))
    v, v2 = universe.normal(0, 0.7, (n_items, 4)), universe.normal(0, 0.7, (n_items, 4))
    category = universe.integers(0, n_categories, n_items)
    category_bias = universe.normal(0, 0.5, n_categories)
    w, w2 = universe.normal(0, 1, 4), universe.normal(0, 1, 4)
    a = 1 + specific * universe.normal(0, 0.5, n_scenarios)
    c = 1 + specific * universe.normal(0, 0.5, n_scenarios)
    delta, delta2 = universe.normal(0, 1, (n_scenarios, 4)), universe.normal(0, 1, (n_scenarios, 4))
    beta = universe.normal(-0.5, 0.5, n_scenarios)
    share = 0.5 ** np.arange(n_scenarios)
    rng = np.random.default_rng(seed)
    s = rng.choice(n_scenarios, rows, p=share / share.sum())
    user, item = rng.integers(0, n_users, rows), rng.integers(0, n_items, rows)
    x = rng.standard_normal((rows, 4))
    click_logit = a[s] * (u[user] * v[item]).sum(1) + (x * (w + specific * delta[s])).sum(1) + beta[s] + category_bias[category[item]]
    buy_logit = c[s] * (u[user] * v2[item]).sum(1) + (x * (w2 + specific * delta2[s])).sum(1) - 1.5
    click = rng.random(rows) < 1 / (1 + np.exp(-click_logit))
    buy = click & (rng.random(rows) < 1 / (1 + np.exp(-buy_logit)))
    p_click = 1 / (1 + np.exp(-click_logit))
    return pa.table({"country": [f"c{i}" for i in s], "user": user, "item": item, "category": category[item],
                     **{f"x{i}": x[:, i] for i in range(4)}, "click": click.astype(int), "conversion": buy.astype(int),
                     # the generator's own probabilities (not features): the oracle's AUC, a ceiling
                     "true_click": p_click, "true_conversion": p_click / (1 + np.exp(-buy_logit))})


def oracle_auc(table: pa.Table) -> dict[str, float]:
    """AUC of the true probabilities, pooled and per country: what no model can beat on this sample."""
    country = np.array(table["country"].to_pylist())
    out = {}
    for key in ["all", *sorted(set(country))]:
        rows = np.ones(len(country), bool) if key == "all" else country == key
        for task in ("click", "conversion"):
            out[f"{key}/{task}"] = auc(table[f"true_{task}"].to_numpy()[rows], table[task].to_numpy()[rows])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=60_000, help="training rows (validation and test: a third each)")
    parser.add_argument("--scenarios", type=int, default=4)
    parser.add_argument("--specific", type=float, default=1.0, help="scale of the scenario-specific weights")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()} ({cpu_model()}), {args.threads} thread(s), torch {torch.__version__}")
    print(f"{args.scenarios} scenarios (shares ∝ 2^-s), specific={args.specific}; {args.rows} train / {args.rows // 3} validation / "
          f"{args.rows // 3} test rows; {args.seeds} seeds; up to {args.epochs} epochs, patience {args.patience}, batch {args.batch_size}")
    results: dict[str, list[dict[str, float]]] = {"oracle": []}
    epochs: dict[str, list[int]] = {}
    seconds: dict[str, list[float]] = {}
    params: dict[str, int] = {}
    for seed in range(args.seeds):
        tables = {split: multi_scenario_log(n, seed=10 * seed + i, n_scenarios=args.scenarios, specific=args.specific)
                  for i, (split, n) in enumerate([("train", args.rows), ("validation", args.rows // 3), ("test", args.rows // 3)])}
        schema = SPEC.fit(tables["train"])
        encoded = {split: schema.encode(t, TASKS) for split, t in tables.items()}
        field = [f.name for f in schema.categorical].index("country")
        results["oracle"].append(oracle_auc(tables["test"]))
        for name in args.backbones:
            torch.manual_seed(seed)
            spec = ModelSpec(backbone=name, options=BACKBONES[name], embedding_dim=8, tower=[32], scenario="country")
            model = build_model(spec, schema, TASKS)
            params[name] = count_parameters(model)
            train_spec = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, monitor="auc",
                                   patience=args.patience, progress=False)
            trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(), TASKS), train_spec)
            start = time.perf_counter()
            fitted = trainer.fit(encoded["train"].batches(args.batch_size, shuffle=True, seed=seed), encoded["validation"])
            seconds.setdefault(name, []).append(time.perf_counter() - start)
            epochs.setdefault(name, []).append(len(fitted.history))
            row = {f"all/{t}": m["auc"] for t, m in evaluate(model, TASKS, encoded["test"]).items()}
            per = scenario_metrics(model, TASKS, encoded["test"], schema.categorical[field], field)
            row.update({f"{s}/{t}": m["auc"] for s, by_task in per.items() for t, m in by_task.items()})
            results.setdefault(name, []).append(row)
            print(f"  seed {seed} {name:<9} " + " ".join(f"{k}={v:.4f}" for k, v in row.items())
                  + f"  ({seconds[name][-1]:.0f}s, {epochs[name][-1]} epochs)", flush=True)
    keys = list(results["oracle"][0])
    print(f"\ntest AUC, mean ± std over {args.seeds} seeds (rows of each scenario in the test split: share ∝ 2^-s)")
    print(f"{'':<22}" + "".join(f"{name:>20}" for name in results))
    print(f"{'parameters':<22}" + "".join(f"{params.get(name, '-'):>20}" for name in results))
    for key in keys:
        cells = []
        for name in results:
            values = np.array([r[key] for r in results[name]])
            cells.append(f"{values.mean():.4f} ± {values.std():.4f}")
        print(f"{key:<22}" + "".join(f"{c:>20}" for c in cells))
    print(f"{'seconds per run':<22}" + "".join(f"{np.mean(seconds[name]):>20.0f}" if name in seconds else f"{'-':>20}" for name in results))
    print(f"{'epochs per run':<22}" + "".join(f"{np.mean(epochs[name]):>20.1f}" if name in epochs else f"{'-':>20}" for name in results))
    print("oracle: the generator's true probabilities (a ceiling); every model trains with the same protocol and selects on validation")


if __name__ == "__main__":
    main()
