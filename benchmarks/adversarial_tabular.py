"""Tabular gradient reversal on the short-video log: a device task as adversary, as auxiliary, or absent.

The device (android / ios / tablet) is a user attribute the features reveal (through ``user_id``)
and that shifts click rates (position bias decays differently per device; the position is not a
feature). Three models, same capacity, shared-bottom 64 + towers 32:

- ``click only``;
- ``+ device (auxiliary)``: a multiclass device task trained as usual (the shared layers learn it);
- ``+ device (GRL)``: the same task behind a gradient reversal layer (``grl_lambda``, ganin
  schedule): the shared layers are pushed to hide the device.

Selection on validation click AUC only (``train.monitor: click/auc``); test click AUC / GAUC,
and the device task's test accuracy (how much device the adversary still reads; chance ≈ the
majority share 0.55).

    OMP_NUM_THREADS=1 python benchmarks/adversarial_tabular.py --rows 100000 --seeds 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from machine import cpu_model

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.datasets.shortvideo import DEVICES, shortvideo_schema, shortvideo_table, shortvideo_tasks, split_by_request
from mtlkit.metrics import auc
from mtlkit.metrics.functions import gauc
from mtlkit.models import ModelSpec, build_model
from mtlkit.tasks import Task
from mtlkit.train import Trainer, TrainSpec, predict_logits


def with_device_code(table: pa.Table) -> pa.Table:
    return table.append_column("device_code", pc.index_in(table["device"], value_set=pa.array(DEVICES)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--grl-lambda", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = {k: with_device_code(v) for k, v in split_by_request(shortvideo_table(args.rows, seed=0)).items()}
    print(f"CPU: {cpu_model()}, 1 torch thread; {args.rows:,} rows, {args.seeds} seeds, {args.epochs} epochs max", flush=True)
    click = shortvideo_tasks(("click",))
    variants = {
        "click only": click,
        "+ device (auxiliary)": [*click, Task(name="device_code", kind="multiclass", n_classes=3, loss_weight=0.5)],
        "+ device (GRL)": [*click, Task(name="device_code", kind="multiclass", n_classes=3, loss_weight=0.5,
                                        grl_lambda=args.grl_lambda, grl_schedule="ganin")],
    }
    features = shortvideo_schema(history=False)
    features = features.model_copy(update={"categorical": [f for f in features.categorical if f.name != "device"], "bias": []})
    schema = features.fit(splits["train"], "train")
    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        for name, tasks in variants.items():
            torch.manual_seed(seed)
            model = build_model(ModelSpec(backbone="shared_bottom", options={"hidden": [64]}, embedding_dim=8, tower=[32]), schema, tasks)
            trainer = Trainer(model, tasks, build_balancer(BalancerSpec(), tasks),
                              TrainSpec(epochs=args.epochs, batch_size=1024, lr=2e-3, patience=1, monitor="click/auc", progress=False))
            start = time.perf_counter()
            trainer.fit(schema.encode(splits["train"], tasks, "train").batches(1024, shuffle=True, seed=seed),
                        schema.encode(splits["validation"], tasks, "validation"))
            test = splits["test"]
            logits = predict_logits(model.eval(), schema.encode(test, tasks, "test", with_targets=False), 16384)
            p = torch.sigmoid(logits["click"]).numpy()
            row = {"click auc": auc(p, test["click"].to_numpy()), "click gauc": gauc(p, test["click"].to_numpy(), test["request_id"].to_numpy())}
            if "device_code" in logits:
                row["device accuracy"] = float((logits["device_code"].argmax(1).numpy() == test["device_code"].to_numpy()).mean())
            row["seconds"] = time.perf_counter() - start
            results.setdefault(name, []).append(row)
            print(name, seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
    print("\nmean ± std over seeds (test; selection on validation click AUC)")
    for name, rows in results.items():
        print(f"{name:24s}", "  ".join(f"{k} {np.mean([r[k] for r in rows]):.4f} ± {np.std([r[k] for r in rows], ddof=1) if len(rows) > 1 else 0:.4f}"
                                       for k in rows[0] if k != "seconds"))


if __name__ == "__main__":
    main()
