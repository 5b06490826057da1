"""Embedding-table scale: does a training step cost what the batch touches, or what the table holds?

The setting of issue 14: MMoE (4 experts of [64], towers [32]), 2 binary tasks (click, like) of
the synthetic short-video log (:mod:`mtlkit.data.datasets.shortvideo`), two hashed ID fields
(user_id, item_id) of ``V`` buckets each, one small categorical (device) and one numeric field
(log duration), embedding dim 16, batch 1024. For every ``V``, thread count and table optimiser
(``dense`` = today's dense gradient + fused Adam over the tables too; ``rowwise_adagrad``,
``lazy_adam``, ``sgd`` = sparse gradients, touched rows only; ``rowwise_adagrad+bf16`` = the same
with the tables stored in bfloat16, ``model.embedding_storage``; the dense parameters always take
fused Adam, lr 1e-3) it trains one epoch and reports samples/s, the ratio to ``V = 1e3``, the
peak RSS, the memory above the pre-model baseline against weights + optimiser state, and the test
AUC / logloss per task. Each configuration runs in its own subprocess, so its peak RSS is its own.
A configuration whose epoch would exceed ``--max-seconds`` stops there: its samples/s stands,
its AUC is left blank (not a full epoch). One whose estimated memory exceeds 70 % of the
available memory is skipped and said so.

The balancer part times MGDA / PCGrad / UPGrad steps (the default table optimiser; the tables'
touched rows in the Jacobian) against equal weighting at each ``--balancer-sizes`` value:
a step-time ratio that does not move with ``V`` means the Jacobian does not grow with the table.

The training loop is driven here (forward, task losses, balancer backward, OptimizerSet step), so
that every configuration times the same steps over the same batches.

Peers (``--optimizers ... torch-rechub deepctr-torch``): the same MMoE built by torch-rechub 0.9.0
(``MMOE``: BatchNorm after every Linear, its only MLP) and DeepCTR-Torch 0.3.0 (``MMOE`` with
``gate_dnn_hidden_units=()``, no L2), each with its dense ``nn.Embedding`` tables and
``torch.optim.Adam`` (lr 1e-3, what both libraries' trainers use), driven by the same loop over
the same batches (their trainers' data loaders are left out, so the table's cost is what differs).
They run where their dense weights, gradients and Adam moments fit in memory (the same skip rule).

    python benchmarks/embedding_scale.py                                  # the full sweep (slow)
    python benchmarks/embedding_scale.py --rows 300000 --sizes 1e3 1e5 1e6 4e6 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_description

from mtlkit.balancing import BalancerSpec, GradientBalancer, build_balancer
from mtlkit.balancing.gradient import shared_jacobian, split_parameters
from mtlkit.data.datasets.shortvideo import shortvideo_table, split_by_request
from mtlkit.data.encoding import stable_hash
from mtlkit.data.schema import FittedCategorical, FittedNumeric, FittedSchema
from mtlkit.metrics.functions import auc, logloss
from mtlkit.models import ModelSpec, build_model
from mtlkit.nn import sparse_weights
from mtlkit.optim import EmbeddingOptimizerSpec, build_optimizers
from mtlkit.tasks import Task

TASKS = [Task(name="click", kind="binary"), Task(name="like", kind="binary")]
DEVICES = ["android", "ios", "tablet"]
DIM = 16
TABLE_LR = {"rowwise_adagrad": 0.05, "lazy_adam": 1e-3, "sgd": 0.5}  # the optimisers' defaults


# -- data: generated once, hashed once; each configuration takes ids mod V -----------------------
def prepare(rows: int, seed: int, path: Path) -> None:
    splits = split_by_request(shortvideo_table(rows, seed))
    arrays = {}
    for name in ("train", "test"):
        table = splits[name]
        arrays[f"{name}_hash"] = np.stack([stable_hash(table.column(c).combine_chunks().cast("string")) for c in ("user_id", "item_id")], 1)
        device = table.column("device").to_numpy(zero_copy_only=False)
        arrays[f"{name}_device"] = np.select([device == d for d in DEVICES], [1, 2, 3], 0).astype(np.int64)
        arrays[f"{name}_duration"] = np.log1p(table.column("duration").to_numpy()).astype(np.float32)
        for task in TASKS:
            arrays[f"{name}_{task.name}"] = table.column(task.name).to_numpy().astype(np.float32)
    mean, std = arrays["train_duration"].mean(), arrays["train_duration"].std()
    for name in ("train", "test"):
        arrays[f"{name}_duration"] = (arrays[f"{name}_duration"] - mean) / std
    np.savez(path, **arrays)


def load(path: Path, buckets: int) -> dict[str, dict[str, torch.Tensor]]:
    data = np.load(path)
    out = {}
    for name in ("train", "test"):
        ids = (data[f"{name}_hash"] % np.uint64(buckets)).astype(np.int64) + 1
        categorical = np.concatenate([ids, data[f"{name}_device"][:, None]], axis=1)
        out[name] = {"categorical": torch.from_numpy(categorical), "numeric": torch.from_numpy(data[f"{name}_duration"][:, None]),
                     **{t.name: torch.from_numpy(data[f"{name}_{t.name}"]) for t in TASKS}}
    return out


def schema(buckets: int) -> FittedSchema:
    return FittedSchema(categorical=[FittedCategorical("user_id", [], buckets), FittedCategorical("item_id", [], buckets),
                                     FittedCategorical("device", DEVICES)],
                        numeric=[FittedNumeric("duration", "standard", None, 0.0, 1.0, False)])


BF16 = "+bf16"  # an optimiser name with this suffix: the same optimiser on tables stored in bfloat16


def model_and_optimizers(buckets: int, optimizer: str):
    torch.manual_seed(0)
    storage = "bfloat16" if optimizer.endswith(BF16) else "float32"
    optimizer = optimizer.removesuffix(BF16)
    model = build_model(ModelSpec(backbone="mmoe", options={"experts": 4, "expert_hidden": [64]}, embedding_dim=DIM, tower=[32],
                                  embedding_storage=storage, embedding_optimizer={"name": optimizer}), schema(buckets), TASKS)
    spec = EmbeddingOptimizerSpec(name=optimizer) if optimizer == "dense" else EmbeddingOptimizerSpec(name=optimizer, lr=TABLE_LR[optimizer])
    return model, build_optimizers(model, spec, lr=1e-3, field_names=["user_id", "item_id", "device"])


PEERS = ("torch-rechub", "deepctr-torch")


def peer_model(library: str, buckets: int) -> tuple[torch.nn.Module, object]:
    """(the peer's MMoE, a function batch → its (B, 2) click/like probabilities)."""
    torch.manual_seed(0)
    vocab = {"user_id": buckets + 1, "item_id": buckets + 1, "device": len(DEVICES) + 1}  # id 0 = unseen, as mtlkit
    if library == "torch-rechub":
        from torch_rechub.basic.features import DenseFeature, SparseFeature
        from torch_rechub.models.multi_task import MMOE

        features = [SparseFeature(name, vocab_size=size, embed_dim=DIM) for name, size in vocab.items()] + [DenseFeature("duration")]
        model = MMOE(features, ["classification"] * len(TASKS), 4, expert_params={"dims": [64]},
                     tower_params_list=[{"dims": [32]} for _ in TASKS])

        def rechub_forward(batch):
            x = {name: batch["categorical"][:, i] for i, name in enumerate(vocab)}
            return model({**x, "duration": batch["numeric"][:, 0]})

        return model, rechub_forward
    import types

    sys.modules.setdefault("requests", types.ModuleType("requests"))  # deepctr-torch imports it for a PyPI version check only
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import MMOE as DeepCTRMMOE

    columns = [SparseFeat(name, vocabulary_size=size, embedding_dim=DIM) for name, size in vocab.items()] + [DenseFeat("duration", 1)]
    model = DeepCTRMMOE(columns, num_experts=4, expert_dnn_hidden_units=(64,), gate_dnn_hidden_units=(), tower_dnn_hidden_units=(32,),
                        l2_reg_embedding=0.0, l2_reg_linear=0.0, task_types=("binary",) * len(TASKS),
                        task_names=tuple(t.name for t in TASKS), device="cpu", seed=0)

    def deepctr_forward(batch):  # its input: one float matrix, the columns in feature order
        return model(torch.cat([batch["categorical"].float(), batch["numeric"]], dim=1))

    return model, deepctr_forward


def losses(model, batch) -> dict[str, torch.Tensor]:
    logits = model({"categorical": batch["categorical"], "numeric": batch["numeric"]})
    ones = torch.ones_like(batch["click"], dtype=torch.bool)
    return {t.name: t.compute_loss(logits[t.name], batch[t.name], None, ones) for t in TASKS}


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    return _status("VmRSS")


def peak_rss_mib() -> float:
    """This process's peak RSS. Not ``ru_maxrss``: Linux carries it over from the parent through
    fork and exec, so a child would report the parent's peak."""
    return _status("VmHWM")


def reset_peak_rss() -> None:
    """Start the peak over from the current RSS (Linux ≥ 4.0), so it measures what comes next."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def state_bytes(opt) -> int:
    """Bytes of optimiser state: an mtlkit OptimizerSet or one torch optimiser."""
    optimizers = [opt] if isinstance(opt, torch.optim.Optimizer) else opt.optimizers
    return sum(t.numel() * t.element_size() for o in optimizers for s in o.state.values()
               for t in s.values() if isinstance(t, torch.Tensor))


# -- one configuration (in its own process) --------------------------------------------------------
def run_training(args, buckets: int, optimizer: str) -> dict:
    data = load(args.data, buckets)
    train, test = data["train"], data["test"]
    loading_peak = peak_rss_mib()
    reset_peak_rss()
    baseline = rss_mib()  # interpreter, torch and the encoded data: what the table's memory adds to
    peer = optimizer in PEERS
    if peer:
        model, forward = peer_model(optimizer, buckets)
        adam = torch.optim.Adam(model.parameters(), lr=1e-3)
        tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    else:
        model, opt = model_and_optimizers(buckets, optimizer)
        balancer = build_balancer(BalancerSpec(), TASKS)
        tables = [model.encoder.embedding.table.weight]
    n = len(train["click"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    steps, warmup = n // args.batch_size, 10
    durations: list[float] = []
    finished, begin = True, time.perf_counter()
    model.train()
    for step in range(steps):
        start = time.perf_counter()
        index = order[step * args.batch_size:(step + 1) * args.batch_size]
        batch = {k: v[index] for k, v in train.items()}
        if peer:  # both peers output probabilities and train on their binary cross-entropy
            adam.zero_grad()
            target = torch.stack([batch[t.name] for t in TASKS], dim=1)
            torch.nn.functional.binary_cross_entropy(forward(batch), target, reduction="sum").div(len(target)).backward()
            adam.step()
        else:
            opt.zero_grad()
            balancer.backward(losses(model, batch), model)
            opt.step()
        if step >= warmup:
            durations.append(time.perf_counter() - start)
        if time.perf_counter() - begin > args.max_seconds:
            finished = False
            break
    wall = time.perf_counter() - begin
    weights = sum(t.numel() * t.element_size() for t in tables)
    result = {"V": buckets, "optimizer": optimizer, "threads": args.threads_now, "steps": step + 1, "epoch_done": finished,
              # per-step percentiles: on shared cores the 10th is what a step costs when no other
              # process takes the core; the median and the epoch's wall-clock rate are next to it
              # fewer steps than the warm-up in --max-seconds (a peer's dense step over a huge table):
              # the epoch's wall-clock rate stands in, marked "*" in the table
              "samples_per_s": args.batch_size / float(np.percentile(durations, 10)) if durations else (step + 1) * args.batch_size / wall,
              "rate_from_epoch": not durations,
              "median_samples_per_s": args.batch_size / float(np.median(durations)) if durations else float("nan"),
              "epoch_samples_per_s": (step + 1) * args.batch_size / wall,
              "peak_rss_mib": max(peak_rss_mib(), loading_peak), "training_peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline,
              "table_mib": weights / 2**20,
              "state_mib": (state_bytes(adam) if peer else state_bytes(opt)) / 2**20}
    if finished:
        model.eval()
        scores = {t.name: [] for t in TASKS}
        with torch.no_grad():
            for first in range(0, len(test["click"]), 8192):
                rows = {k: test[k][first:first + 8192] for k in ("categorical", "numeric")}
                if peer:
                    probabilities = forward(rows)
                    for i, t in enumerate(TASKS):
                        scores[t.name].append(probabilities[:, i])
                    continue
                logits = model(rows)
                for t in TASKS:
                    scores[t.name].append(torch.sigmoid(logits[t.name]))
        for t in TASKS:
            p, y = torch.cat(scores[t.name]).numpy(), test[t.name].numpy()
            result[f"auc_{t.name}"], result[f"logloss_{t.name}"] = auc(p, y), logloss(p, y)
    return result


def run_balancers(args, buckets: int, names: list[str]) -> list[dict]:
    """Every balancer's step time at one V, interleaved round by round in one process (one model),
    so that another process's load hits all of them alike; medians per balancer."""
    data = load(args.data, buckets)["train"]
    model, opt = model_and_optimizers(buckets, args.balancer_optimizer)
    balancers = {name: build_balancer(BalancerSpec(name=name), TASKS) for name in names}
    g = torch.Generator().manual_seed(2)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.balancer_rounds + 1):  # round 0 warms up
        for name, balancer in balancers.items():
            for _ in range(args.balancer_steps):
                index = torch.randint(0, len(data["click"]), (args.batch_size,), generator=g)
                batch = {k: v[index] for k, v in data.items()}
                start = time.perf_counter()
                opt.zero_grad()
                balancer.backward(losses(model, batch), model)
                opt.step()
                if round_:
                    times[name].append(time.perf_counter() - start)
    return [{"V": buckets, "balancer": name, "threads": args.threads_now, "ms_per_step": 1000 * float(np.percentile(times[name], 10)),
             "median_ms_per_step": 1000 * float(np.median(times[name])),
             "jacobian_columns": _jacobian_columns(model, balancers[name], data, args.batch_size)} for name in names]


def _jacobian_columns(model, balancer, data, batch_size) -> int | None:
    """How wide the balancer's J is on one batch (dense shared values + touched rows × dim)."""
    if not isinstance(balancer, GradientBalancer):
        return None
    batch = {k: v[:batch_size] for k, v in data.items()}
    jac, _ = shared_jacobian(list(losses(model, batch).values()), split_parameters(model)[0], "loop", sparse_weights(model))
    return int(jac.shape[1]) if jac is not None else None


# -- the sweep ------------------------------------------------------------------------------------


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def needed_mib(buckets: int, optimizer: str) -> float:
    weights = (2 * buckets + 4) * DIM * 4 / 2**20
    factor = {"dense": 4.2, "lazy_adam": 3.2, "rowwise_adagrad": 1.1, "sgd": 1.05,  # weights, grad, moments
              "rowwise_adagrad+bf16": 0.6}.get(optimizer, 4.2)
    return weights * factor + 600


def child(args, kind: str, buckets: int, what: str) -> dict | list | None:
    command = [sys.executable, __file__, "--child", kind, str(buckets), what, "--data", str(args.data), "--threads-now",
               str(args.threads_now), "--batch-size", str(args.batch_size), "--max-seconds", str(args.max_seconds),
               "--balancer-steps", str(args.balancer_steps), "--balancer-rounds", str(args.balancer_rounds),
               "--balancer-optimizer", args.balancer_optimizer]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_now)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  {kind} V={buckets} {what}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e3, 1e5, 1e6, 4e6, 1.6e7], help="buckets per ID field")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--optimizers", nargs="+", default=["dense", "rowwise_adagrad", "rowwise_adagrad+bf16", "lazy_adam", "sgd", *PEERS],
                        choices=["dense", "rowwise_adagrad", "rowwise_adagrad+bf16", "lazy_adam", "sgd", *PEERS],
                        help="mtlkit's table optimisers (+bf16: tables stored in bfloat16), and the peers' MMoE (dense tables + Adam)")
    parser.add_argument("--rows", type=int, default=2_000_000, help="short-video log rows (80%% train, 10%% test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop a configuration's epoch after this long")
    parser.add_argument("--balancers", nargs="*", default=["fixed", "mgda", "pcgrad", "upgrad"])
    parser.add_argument("--balancer-sizes", nargs="*", type=float, default=[1e3, 4e6])
    parser.add_argument("--balancer-steps", type=int, default=20, help="steps per balancer per round")
    parser.add_argument("--balancer-rounds", type=int, default=8)
    parser.add_argument("--balancer-optimizer", default="rowwise_adagrad")
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads-now", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        torch.set_num_threads(args.threads_now)
        kind, buckets, what = args.child[0], int(args.child[1]), args.child[2]
        result = run_training(args, buckets, what) if kind == "train" else run_balancers(args, buckets, what.split(","))
        print(json.dumps(result))
        return

    print(f"CPU: {cpu_description()}; torch {torch.__version__}; python {platform.python_version()}")
    sizes = [int(v) for v in args.sizes]
    with tempfile.TemporaryDirectory() as tmp:
        args.data = Path(tmp) / "shortvideo.npz"
        begin = time.perf_counter()
        prepare(args.rows, args.seed, args.data)
        print(f"short-video log: {args.rows} rows (train/test {0.8:.0%}/{0.1:.0%}), generated and hashed in "
              f"{time.perf_counter() - begin:.0f} s; batch {args.batch_size}, embedding dim {DIM}, max {args.max_seconds:.0f} s per epoch")
        results = []
        for threads in args.threads:
            args.threads_now = threads
            for optimizer in args.optimizers:
                for v in sizes:
                    need, have = needed_mib(v, optimizer), available_mib()
                    if need > 0.7 * have:
                        print(f"  skip {optimizer} V={v:.0e} {threads} thread(s): needs ~{need:.0f} MiB, {have:.0f} MiB available")
                        continue
                    r = child(args, "train", v, optimizer)
                    if r is not None:
                        results.append(r)
                        print(f"  {optimizer:<16} V={v:<9} threads={threads}: {r['samples_per_s']:>8.0f} samples/s, peak RSS "
                              f"{r['peak_rss_mib']:.0f} MiB" + (f", AUC click {r['auc_click']:.4f}" if 'auc_click' in r else ""), flush=True)
        report_training(results, sizes)
        balancer_results = []
        for threads in args.threads if args.balancers else []:
            args.threads_now = threads
            for v in [int(s) for s in args.balancer_sizes]:
                r = child(args, "balancer", v, ",".join(args.balancers))
                if r is not None:
                    balancer_results.extend(r)
        report_balancers(balancer_results)


def report_training(results: list[dict], sizes: list[int]) -> None:
    print("\n## Training: samples/s, ratio to the smallest V, memory, test metrics after one epoch\n")
    print("samples/s: batch / the 10th-percentile step time (a step's cost when no other process takes the shared")
    print("core; the ratio uses it), then the median step's rate and the epoch's wall-clock rate in brackets;")
    print("* = fewer steps than the warm-up fitted in --max-seconds: the epoch's wall-clock rate\n")
    print("peak RSS: the configuration's own process; the next column: its training peak above the RSS before the model")
    print("was built (interpreter, torch, encoded data), divided by the table's weights + the optimiser state\n")
    print("| optimizer | threads | V | samples/s | vs V=min | peak RSS MiB | (peak − baseline) / (table + state) | "
          "AUC click | AUC like | logloss click | logloss like |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = next((b for b in results if b["optimizer"] == r["optimizer"] and b["threads"] == r["threads"] and b["V"] == min(sizes)), None)
        ratio = r["samples_per_s"] / base["samples_per_s"] if base else float("nan")
        own = r["table_mib"] + r["state_mib"]
        memory = (r["training_peak_rss_mib"] - r["baseline_rss_mib"]) / own if own else float("nan")
        metrics = [f"{r[k]:.4f}" if k in r else "—" for k in ("auc_click", "auc_like", "logloss_click", "logloss_like")]
        partial = "" if r["epoch_done"] else f" ({r['steps']} steps)"
        star = "*" if r.get("rate_from_epoch") else ""
        print(f"| {r['optimizer']} | {r['threads']} | {r['V']:.0e} | {r['samples_per_s']:.0f}{star} ({r['median_samples_per_s']:.0f}, "
              f"{r['epoch_samples_per_s']:.0f}){partial} | {ratio:.2f} | "
              f"{r['peak_rss_mib']:.0f} | {memory:.2f} (table {r['table_mib']:.0f} + state {r['state_mib']:.0f} MiB) | "
              + " | ".join(metrics) + " |")
    dense = {(r["threads"], r["V"]): r for r in results if r["optimizer"] == "dense" and "auc_click" in r}
    gaps = [(r["threads"], r["V"], t.name, r[f"auc_{t.name}"] - dense[(r["threads"], r["V"])][f"auc_{t.name}"])
            for r in results if r["optimizer"] == "rowwise_adagrad" and "auc_click" in r and (r["threads"], r["V"]) in dense
            for t in TASKS]
    if gaps:
        print("\nrow-wise AdaGrad AUC − dense Adam AUC: " + ", ".join(f"{t}t V={v:.0e} {n} {g:+.4f}" for t, v, n, g in gaps))
    default = {(r["threads"], r["V"]): r for r in results if r["optimizer"] == "rowwise_adagrad"}
    half = [(r, default[(r["threads"], r["V"])]) for r in results
            if r["optimizer"] == "rowwise_adagrad" + BF16 and (r["threads"], r["V"]) in default]
    if half:
        print("\nbf16 tables vs fp32 tables (row-wise AdaGrad): " + "; ".join(
            f"{r['threads']}t V={r['V']:.0e} peak RSS {r['peak_rss_mib'] / d['peak_rss_mib']:.2f}×, samples/s "
            f"{r['samples_per_s'] / d['samples_per_s']:.2f}×" + "".join(
                f", AUC {t.name} {r[f'auc_{t.name}'] - d[f'auc_{t.name}']:+.4f}" for t in TASKS if f"auc_{t.name}" in r and f"auc_{t.name}" in d)
            for r, d in half))
    for peer in PEERS:
        pairs = [(r, default[(r["threads"], r["V"])]) for r in results if r["optimizer"] == peer and (r["threads"], r["V"]) in default]
        if pairs:
            print(f"\nmtlkit row-wise AdaGrad samples/s ÷ {peer}: " + ", ".join(
                f"{r['threads']}t V={r['V']:.0e} {d['samples_per_s'] / r['samples_per_s']:.1f}×" for r, d in pairs))


def report_balancers(results: list[dict]) -> None:
    if not results:
        return
    print("\n## Gradient balancers with sparse tables: ms per step, ratio to equal weighting (fixed)\n")
    print("ms/step: 10th percentile of the interleaved steps (median in brackets); the ratio uses the 10th percentile\n")
    print("| threads | V | balancer | ms/step | vs fixed | J columns |")
    print("|---|---|---|---|---|---|")
    for r in results:
        fixed = next((b for b in results if b["balancer"] == "fixed" and b["V"] == r["V"] and b["threads"] == r["threads"]), None)
        ratio = r["ms_per_step"] / fixed["ms_per_step"] if fixed else float("nan")
        r["ratio"] = ratio
        print(f"| {r['threads']} | {r['V']:.0e} | {r['balancer']} | {r['ms_per_step']:.2f} ({r['median_ms_per_step']:.2f}) | {ratio:.3f} | "
              f"{r['jacobian_columns'] or '—'} |")
    sizes = sorted({r["V"] for r in results})
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for r in results:
            if r["V"] == hi and r["balancer"] != "fixed":
                low = next((b for b in results if b["V"] == lo and b["balancer"] == r["balancer"] and b["threads"] == r["threads"]), None)
                if low:
                    print(f"{r['balancer']} ({r['threads']} thread(s)): ratio at V={hi:.0e} / ratio at V={lo:.0e} = {r['ratio'] / low['ratio']:.3f}")


if __name__ == "__main__":
    main()
