"""mtlkit next to torch-rechub and DeepCTR-Torch on census-income group 1: one configuration, one run.

Every (library, model) pair trains in its own subprocess, so the peak RSS (``ru_maxrss``) of a
row is that model's alone; the parent never imports torch and only collects one JSON line per
worker and prints one table: samples/second over the training epochs, the ratio to torch-rechub
and to DeepCTR-Torch for the same architecture, peak RSS, test AUC of both tasks and the
achieved GFLOP/s. Nothing is asserted: the targets below are printed as met / missed.

    python benchmarks/compare_libraries.py                        # full run, ~10-15 minutes on 2 idle cores
    python benchmarks/compare_libraries.py --repeats 3 --profile  # on a shared machine: fastest of 3 rounds
    python benchmarks/compare_libraries.py --quick                # 1 epoch, MMoE only
    python benchmarks/compare_libraries.py --libraries mtlkit deepctr-torch --models mmoe
    python benchmarks/compare_libraries.py --profile              # + where mtlkit MMoE's step time goes

Common configuration (all libraries)
    Inputs: the 32 categorical fields label-encoded with vocabularies fit on the training split
    (id 0 = unseen), each embedded in 16 dimensions, plus the 7 numeric fields standardised
    (log1p first for the four money columns): mtlkit's census schema, encoded once by a
    "prepare" subprocess and handed to every worker as the same arrays. Input width 32*16+7 = 519.
    MMoE: 8 experts of hidden [64], one linear softmax gate per task (DeepCTR-Torch:
    ``gate_dnn_hidden_units=()``; torch-rechub's gate is Linear+BatchNorm+softmax and cannot be
    changed). PLE: 2 levels, 3 task-specific experts per task + 2 shared experts (8 experts per
    level, as MMoE), experts [64], linear gates; the same three numbers are passed to every
    library (DeepCTR-Torch's defaults are 2 levels / 1 / 1, torch-rechub has none and its census
    example uses 1 level / 2 / 1; DeepCTR-Torch 0.3.0 builds ``specific_expert_num`` shared
    experts per level, so shared <= specific is required). Shared-bottom: bottom [512], the
    parameter count of MMoE's 8x[64] experts (as torch-rechub's census example matches its
    shared bottom to MMoE). Towers [32] then one output unit per task. Batch 1024, Adam lr 1e-3,
    no weight decay / L2 (torch-rechub ``weight_decay=0``, DeepCTR-Torch ``l2_reg_embedding=0``),
    3 epochs, shuffled, 2 threads. Each library keeps its own initialisation and loss reduction
    (mtlkit: sum of the tasks' mean BCE-with-logits; torch-rechub: mean of the tasks' BCE on
    probabilities; DeepCTR-Torch: summed BCE on probabilities). torch-rechub's MLP always has
    BatchNorm after every Linear (experts, gates, towers); mtlkit and DeepCTR-Torch use none, unless
    ``--batch-norm`` gives mtlkit's experts / bottom and towers theirs (mtlkit's gates stay linear).

How each library is fed and timed (training epochs only; no data loading, preprocessing,
validation or test evaluation inside the timed region)
    mtlkit: ``build_model(ModelSpec(...))`` and ``Trainer.fit`` with ``TrainSpec(epochs, 1024,
    lr=1e-3, progress=False, patience=None, precision="fp32")`` on ``EncodedTable.batches(shuffle=True)``
    (fp32 like the peers and the matmul peak: mtlkit's default ``auto`` trains in bf16 on a CPU with
    AVX512-BF16 or AMX, 1.5x as fast on an AMD EPYC; ``--precision auto`` measures that); the time
    is ``FitResult.train_seconds`` (the per-epoch validation pass that ``fit`` always runs is
    excluded; it is given a 1,000-row validation slice) and the test AUC is of the weights after
    the last epoch (``fit`` restores the best validation epoch; a callback keeps the last one
    instead, so every library is scored on its final weights).
    torch-rechub 0.9.0, as its ``examples/ranking/run_census.py``: ``SparseFeature`` /
    ``DenseFeature``, a dict of per-column numpy arrays, ``DataGenerator(...).generate_dataloader``
    and ``MTLTrainer``. ``MTLTrainer.fit`` validates after every epoch (with early stopping), so
    the script calls its ``train_one_epoch`` once per epoch and times those calls; tqdm bars are
    off (``TQDM_DISABLE=1``); its per-step ``.item()`` calls and per-sample DataLoader collation
    are part of its documented loop and are timed. Test AUC: ``MTLTrainer.evaluate`` on the test
    loader.
    DeepCTR-Torch 0.3.0, as its ``examples/run_multitask_learning.py``: ``SparseFeat`` /
    ``DenseFeat``, ``model.compile("adam", loss="binary_crossentropy")``, ``model.fit`` with a
    dict of numpy arrays. ``verbose=0`` (``verbose>0`` computes training metrics on every step
    and prints per epoch) and no validation data; the time is the sum of epoch begin -> end
    measured by a ``Callback`` (so ``fit``'s one-off concatenation of the inputs is excluded).
    Test AUC: ``sklearn.metrics.roc_auc_score`` on ``model.predict``. (deepctr-torch 0.3.0
    imports ``requests``, undeclared, only for a PyPI version check on import; the worker gives
    it an empty stand-in module so that the import works and no request is made.)

FLOPs and the matmul peak
    GFLOP/s counts the multiply-adds of one forward pass of the common architecture (experts,
    gates, gate mixing, towers; embedding gathers, activations, softmax and the optimiser
    excluded), x2 FLOPs per multiply-add, x3 for forward + backward, times the samples trained,
    over the training time. The same analytic count is used for every library's row of an
    architecture (torch-rechub's BatchNorms and the last-level PLE shared gate that DeepCTR-Torch
    computes and discards are not counted). mtlkit's rows also report ``torch.utils.flop_counter`` on one training step
    as a cross-check. That count is lower than the architecture's: mtlkit computes the small
    categorical fields' share of the first layer in vocabulary space (``mtlkit.nn.vocabulary_affine``:
    ``(E_f W_f)[id_f]``, GEMMs of vocabulary size and an ``embedding_bag`` sum, the same numbers), so
    its GFLOP/s are the architecture's work per second, the figure comparable across libraries, and
    the targets line also prints the rate of the arithmetic it executes. The peak is ``torch.mm`` of two 1024x1024 fp32 matrices with the same thread
    count, measured in its own subprocess before and after the models; the higher is used.

Shared machines
    Every row also shows the worker's CPU use over the timed epochs (200% = both threads busy)
    and the 1-minute load average at its end. When other processes compete for the cores, each
    OpenMP parallel region waits for a descheduled thread and a 2-thread run can be several times
    slower than an idle one (the profile's 1-thread line shows this). ``--repeats N`` runs N
    interleaved rounds (seeds seed..seed+N-1, the library order rotated each round) and the table
    keeps each row's fastest round, with the median alongside; the AUC columns then give the
    mean and standard deviation over the seeds. The matmul peak is re-measured after each round.

Profile (``--profile``): mtlkit MMoE's training step timed by phase (batch slice, forward, loss,
backward, optimiser; medians over 60 steps at 1 thread and at ``--threads``), a few shapes in
isolation (the expert layer's three GEMMs alone as the floor, Adam default / foreach / fused,
gate mixing, the embedding gather, alternative layouts), and torch.profiler's top ops.

Targets (from the issue; ratios from one run): mtlkit MMoE >= 3x torch-rechub MMOE and >= 2x
DeepCTR-Torch MMOE in samples/second at equal or better test AUC (within ``--auc-tolerance``),
and achieved GFLOP/s >= 60% of the measured matmul peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_description  # noqa: E402

LIBRARIES = ["mtlkit", "torch-rechub", "deepctr-torch"]
MODELS = ["mmoe", "ple", "shared_bottom"]
LIBRARY_LABEL = {"mtlkit": "mtlkit", "torch-rechub": "torch-rechub", "deepctr-torch": "DeepCTR-Torch"}
MODEL_LABEL = {
    "mtlkit": {"mmoe": "MMoE", "ple": "PLE", "shared_bottom": "shared-bottom"},
    "torch-rechub": {"mmoe": "MMOE", "ple": "PLE", "shared_bottom": "SharedBottom"},
    "deepctr-torch": {"mmoe": "MMOE", "ple": "PLE", "shared_bottom": "SharedBottom"},
}
TASKS = ["income", "marital"]
RESULT = "@@RESULT "
SKIP = "@@SKIP "


# ---------------------------------------------------------------------------------------------
# Configuration shared by every library
# ---------------------------------------------------------------------------------------------


def common_config(args: argparse.Namespace) -> dict:
    return {
        "embedding_dim": 16,
        "experts": 8,
        "expert_hidden": [64],
        "tower": [32],
        "ple_levels": args.ple_levels,
        "ple_specific": args.ple_specific,
        "ple_shared": args.ple_shared,
        "bottom": args.bottom,
        "batch_size": args.batch_size,
        "lr": 1e-3,
        "epochs": args.epochs,
        "threads": args.threads,
        "seed": args.seed,
        "train_rows": args.train_rows,
        "batch_norm": args.batch_norm,
        "precision": args.precision,
    }


def forward_macs(model: str, input_dim: int, cfg: dict, n_tasks: int = len(TASKS)) -> int:
    """Multiply-adds of one sample's forward pass: experts, gates, gate mixing, towers."""

    def mlp(widths: list[int]) -> int:
        return sum(a * b for a, b in zip(widths[:-1], widths[1:]))

    def towers(width: int) -> int:
        return n_tasks * mlp([width, *cfg["tower"], 1])

    hidden = cfg["expert_hidden"]
    if model == "mmoe":
        experts, width = cfg["experts"], hidden[-1]
        return experts * mlp([input_dim, *hidden]) + n_tasks * input_dim * experts + n_tasks * experts * width + towers(width)
    if model == "ple":
        per_task, shared, width = cfg["ple_specific"], cfg["ple_shared"], hidden[-1]
        n_experts, seen = n_tasks * per_task + shared, per_task + shared
        total = 0
        for level in range(cfg["ple_levels"]):
            inp = input_dim if level == 0 else width
            total += n_experts * mlp([inp, *hidden])  # every expert of the level
            total += n_tasks * (inp * seen + seen * width)  # task gates and their mixing
            if level < cfg["ple_levels"] - 1:
                total += inp * n_experts + n_experts * width  # shared gate over all experts, mixing
        return total + towers(width)
    if model == "shared_bottom":
        return mlp([input_dim, *cfg["bottom"]]) + towers(cfg["bottom"][-1])
    raise ValueError(model)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def vm_hwm_mib() -> float | None:
    """The process's own high-water RSS from /proc (unaffected by what the parent held before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def emit(payload: dict) -> None:
    print(RESULT + json.dumps(payload), flush=True)


# ---------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess)
# ---------------------------------------------------------------------------------------------


def worker_prepare(args: argparse.Namespace) -> None:
    """Load census group 1 with mtlkit, fit the schema on train, encode all splits once."""
    import numpy as np

    from mtlkit.data.datasets.census import load_census

    start = time.perf_counter()
    data = load_census(args.root, group=1)
    schema = data.schema.fit(data.train)
    arrays = {}
    for split in ("train", "validation", "test"):
        table = schema.encode(getattr(data, split), data.tasks)
        arrays[f"{split}_categorical"] = table.inputs["categorical"].numpy()
        arrays[f"{split}_numeric"] = table.inputs["numeric"].numpy()
        for task in TASKS:
            if not bool(table.masks[task].all()):
                raise SystemExit(f"census {split}: task {task} has missing labels")
            arrays[f"{split}_{task}"] = table.targets[task].numpy().astype(np.float32)
    out = Path(args.data_dir)
    np.savez(out / "census_g1.npz", **arrays)
    schema.save(out / "schema.json")
    numeric_names = [f.name + suffix for f in schema.numeric for suffix in ([""] + (["_missing"] if f.has_missing_flag else []))]
    meta = {
        "categorical": [f.name for f in schema.categorical],
        "cardinalities": schema.cardinalities,
        "numeric": numeric_names,
        "rows": {split: int(arrays[f"{split}_income"].shape[0]) for split in ("train", "validation", "test")},
        "positive_rate": {task: float(arrays[f"train_{task}"].mean()) for task in TASKS},
    }
    (out / "meta.json").write_text(json.dumps(meta))
    emit({"kind": "prepare", "seconds": time.perf_counter() - start, **meta})


def _load_arrays(data_dir: str, train_rows: int | None = None):
    import numpy as np

    arrays = dict(np.load(Path(data_dir) / "census_g1.npz"))
    if train_rows:
        arrays = {k: (v[:train_rows] if k.startswith("train_") else v) for k, v in arrays.items()}
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    return arrays, meta


def _setup_torch(cfg: dict):
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    return torch


def _auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def worker_matmul(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(20):
        torch.mm(a, b, out=c)
    rounds = []
    for _ in range(9):
        start = time.perf_counter()
        for _ in range(20):
            torch.mm(a, b, out=c)
        rounds.append((time.perf_counter() - start) / 20)
    rounds.sort()
    flops = 2 * n**3
    torch.set_num_threads(1)
    single = min(_time_mm(torch, a, b, c) for _ in range(5))
    emit({"kind": "matmul", "threads": args.threads, "gflops_best": flops / rounds[0] / 1e9,
          "gflops_median": flops / rounds[len(rounds) // 2] / 1e9, "gflops_1thread": flops / single / 1e9})


def _time_mm(torch, a, b, c, repeats: int = 10) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b, out=c)
    return (time.perf_counter() - start) / repeats


def _mtlkit_spec(model: str, cfg: dict):
    """(registered backbone name, its options) for the common configuration."""
    if model == "mmoe":
        return "mmoe", {"experts": cfg["experts"], "expert_hidden": cfg["expert_hidden"]}
    if model == "ple":
        return "ple", {"levels": cfg["ple_levels"], "experts_per_task": cfg["ple_specific"],
                       "shared_experts": cfg["ple_shared"], "expert_hidden": cfg["expert_hidden"]}
    if model == "shared_bottom":
        return "shared_bottom", {"hidden": cfg["bottom"]}
    raise ValueError(model)


def _mtlkit_setup(cfg: dict, model_name: str, data_dir: str):
    """Tables, tasks and the built model (or a skip reason) for mtlkit."""
    torch = _setup_torch(cfg)
    from pydantic import ValidationError

    from mtlkit.data.batch import EncodedTable
    from mtlkit.data.datasets.census import census_tasks
    from mtlkit.data.schema import FittedSchema
    from mtlkit.models import ModelSpec, build_model
    from mtlkit.models.base import BACKBONES

    arrays, meta = _load_arrays(data_dir, cfg.get("train_rows"))
    schema = FittedSchema.load(Path(data_dir) / "schema.json")
    tasks = census_tasks(1)

    def table(split: str, rows: int | None = None) -> EncodedTable:
        cut = slice(0, rows)
        inputs = {"categorical": torch.from_numpy(arrays[f"{split}_categorical"][cut]),
                  "numeric": torch.from_numpy(arrays[f"{split}_numeric"][cut])}
        targets = {t: torch.from_numpy(arrays[f"{split}_{t}"][cut]) for t in TASKS}
        masks = {t: torch.ones(len(targets[t]), dtype=torch.bool) for t in TASKS}
        return EncodedTable(inputs, targets, masks)

    backbone, options = _mtlkit_spec(model_name, cfg)
    if backbone not in BACKBONES:
        return None, f"mtlkit backbone {backbone!r} is not registered yet (have: {', '.join(BACKBONES.names())})"
    if cfg.get("batch_norm"):  # BatchNorm after every expert / bottom and tower layer, as torch-rechub's MLP
        options = {**options, "batch_norm": True}
    try:
        spec = ModelSpec(backbone=backbone, options=options, embedding_dim=cfg["embedding_dim"], tower=cfg["tower"],
                         tower_batch_norm=bool(cfg.get("batch_norm")))
    except ValidationError as error:
        return None, f"mtlkit backbone {backbone!r} rejects options {options}: {str(error).splitlines()[0]}"
    torch.manual_seed(cfg["seed"])
    model = build_model(spec, schema, tasks)
    return (torch, model, tasks, table), None


def worker_mtlkit(args: argparse.Namespace, cfg: dict) -> None:
    setup, skip = _mtlkit_setup(cfg, args.model, args.data_dir)
    if skip:
        print(SKIP + skip, flush=True)
        return
    torch, model, tasks, table = setup
    from mtlkit.balancing import BalancerSpec, build_balancer
    from mtlkit.train import Trainer, TrainSpec
    from mtlkit.train.evaluate import predict_logits
    from mtlkit.train.trainer import Callback

    class KeepLastEpoch(Callback):
        """``fit`` restores the best validation epoch; keep the last epoch's weights instead."""

        state = None

        def on_epoch_end(self, trainer, record, validation) -> None:
            if record["epoch"] == cfg["epochs"]:
                self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    train, test = table("train"), table("test")
    validation = table("validation", rows=1000)  # fit always validates; that pass is not timed
    keep = KeepLastEpoch()
    spec = TrainSpec(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], progress=False, precision=cfg["precision"],
                     patience=None, threads=cfg["threads"])
    trainer = Trainer(model, tasks, build_balancer(BalancerSpec(), tasks), spec, callbacks=[keep])
    cpu0 = cpu_seconds()
    result = trainer.fit(train.batches(cfg["batch_size"], shuffle=True, seed=cfg["seed"]), validation)
    cpu = cpu_seconds() - cpu0  # includes fit's small validation passes
    rss, hwm = peak_rss_mib(), vm_hwm_mib()
    model.load_state_dict(keep.state)
    logits = predict_logits(model, test)
    aucs = {t: _auc(test.targets[t].numpy(), logits[t].numpy()) for t in TASKS}
    flop_counter = _count_flops(torch, model, tasks, train, cfg["batch_size"])
    emit({"kind": "train", "library": "mtlkit", "model": args.model,
          "params": sum(p.numel() for p in model.parameters()),
          "samples": result.train_samples, "seconds": result.train_seconds,
          "steps": cfg["epochs"] * len(train.batches(cfg["batch_size"])),
          "peak_rss_mib": rss, "vm_hwm_mib": hwm, "auc": aucs, "counted_flops_per_sample": flop_counter,
          "cpu_seconds": cpu, "load_end": load_average()})


def _count_flops(torch, model, tasks, train, batch_size: int) -> float | None:
    """FLOPs per sample of one forward+backward, as torch.utils.flop_counter counts them."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    batch = train.take(slice(0, batch_size))
    by_name = {t.name: t for t in tasks}
    model.train()  # a training step, as the trainer runs it (eval mode with gradients takes the usual first layer)
    counter = FlopCounterMode(display=False)
    with counter:
        logits = model(batch.inputs)
        loss = sum(by_name[n].compute_loss(logits[n], batch.targets[n], None, batch.masks[n]) for n in TASKS)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


def worker_rechub(args: argparse.Namespace, cfg: dict) -> None:
    torch = _setup_torch(cfg)
    import numpy as np
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    arrays, meta = _load_arrays(args.data_dir, cfg.get("train_rows"))
    sparse, dense = meta["categorical"], meta["numeric"]

    def split(name: str):
        x = {col: arrays[f"{name}_categorical"][:, i] for i, col in enumerate(sparse)}
        x.update({col: arrays[f"{name}_numeric"][:, j] for j, col in enumerate(dense)})
        return x, np.stack([arrays[f"{name}_{t}"] for t in TASKS], axis=1)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split("train"), split("validation"), split("test")
    features = [SparseFeature(col, vocab_size=card, embed_dim=cfg["embedding_dim"]) for col, card in zip(sparse, meta["cardinalities"])]
    features += [DenseFeature(col) for col in dense]
    task_types = ["classification"] * len(TASKS)
    towers = [{"dims": cfg["tower"]} for _ in TASKS]
    torch.manual_seed(cfg["seed"])
    if args.model == "mmoe":
        model = MMOE(features, task_types, cfg["experts"], expert_params={"dims": cfg["expert_hidden"]}, tower_params_list=towers)
    elif args.model == "ple":
        model = PLE(features, task_types, n_level=cfg["ple_levels"], n_expert_specific=cfg["ple_specific"],
                    n_expert_shared=cfg["ple_shared"], expert_params={"dims": cfg["expert_hidden"]}, tower_params_list=towers)
    else:
        model = SharedBottom(features, task_types, bottom_params={"dims": cfg["bottom"]}, tower_params_list=towers)

    dg = DataGenerator(x_train, y_train)
    train_dl, val_dl, test_dl = dg.generate_dataloader(x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
                                                       batch_size=cfg["batch_size"])
    with tempfile.TemporaryDirectory() as model_path:
        trainer = MTLTrainer(model, task_types=task_types, optimizer_params={"lr": cfg["lr"], "weight_decay": 0.0},
                             n_epoch=cfg["epochs"], earlystop_patience=cfg["epochs"], device="cpu", model_path=model_path)
        seconds, cpu = 0.0, 0.0
        for _ in range(cfg["epochs"]):  # MTLTrainer.fit = train_one_epoch + validation per epoch
            start, cpu0 = time.perf_counter(), cpu_seconds()
            trainer.train_one_epoch(train_dl)
            seconds += time.perf_counter() - start
            cpu += cpu_seconds() - cpu0
        rss, hwm = peak_rss_mib(), vm_hwm_mib()
        scores = trainer.evaluate(trainer.model, test_dl)
    emit({"kind": "train", "library": "torch-rechub", "model": args.model,
          "params": sum(p.numel() for p in model.parameters()),
          "samples": cfg["epochs"] * len(y_train), "seconds": seconds, "steps": cfg["epochs"] * len(train_dl),
          "peak_rss_mib": rss, "vm_hwm_mib": hwm, "auc": {t: float(s) for t, s in zip(TASKS, scores)},
          "cpu_seconds": cpu, "load_end": load_average()})


def worker_deepctr(args: argparse.Namespace, cfg: dict) -> None:
    _setup_torch(cfg)
    import types

    import numpy as np

    # deepctr-torch 0.3.0 imports `requests` (undeclared) only to start a thread that asks PyPI for
    # newer versions; an empty stand-in keeps the benchmark off the network (the thread's bare
    # `except` turns the missing `get` into a printed hint).
    sys.modules["requests"] = types.ModuleType("requests")
    from deepctr_torch.callbacks import Callback
    from deepctr_torch.inputs import DenseFeat, SparseFeat, get_feature_names
    from deepctr_torch.models import MMOE, PLE, SharedBottom

    arrays, meta = _load_arrays(args.data_dir, cfg.get("train_rows"))
    sparse, dense = meta["categorical"], meta["numeric"]
    columns = [SparseFeat(col, vocabulary_size=card, embedding_dim=cfg["embedding_dim"]) for col, card in zip(sparse, meta["cardinalities"])]
    columns += [DenseFeat(col, 1) for col in dense]
    names = get_feature_names(columns)

    def split(name: str):
        x = {col: arrays[f"{name}_categorical"][:, i] for i, col in enumerate(sparse)}
        x.update({col: arrays[f"{name}_numeric"][:, j] for j, col in enumerate(dense)})
        return {n: x[n] for n in names}, np.stack([arrays[f"{name}_{t}"] for t in TASKS], axis=1)

    (x_train, y_train), (x_test, y_test) = split("train"), split("test")
    common = dict(tower_dnn_hidden_units=tuple(cfg["tower"]), l2_reg_embedding=0.0, l2_reg_linear=0.0,
                  task_types=("binary",) * len(TASKS), task_names=tuple(TASKS), device="cpu", seed=cfg["seed"])
    if args.model == "mmoe":
        model = MMOE(columns, num_experts=cfg["experts"], expert_dnn_hidden_units=tuple(cfg["expert_hidden"]),
                     gate_dnn_hidden_units=(), **common)
    elif args.model == "ple":
        if cfg["ple_shared"] > cfg["ple_specific"]:
            print(SKIP + "DeepCTR-Torch 0.3.0 PLE builds specific_expert_num shared experts: needs shared <= specific", flush=True)
            return
        model = PLE(columns, shared_expert_num=cfg["ple_shared"], specific_expert_num=cfg["ple_specific"],
                    num_levels=cfg["ple_levels"], expert_dnn_hidden_units=tuple(cfg["expert_hidden"]),
                    gate_dnn_hidden_units=(), **common)
    else:
        model = SharedBottom(columns, bottom_dnn_hidden_units=tuple(cfg["bottom"]), **common)
    model.compile("adam", loss="binary_crossentropy")  # torch.optim.Adam, lr 1e-3
    for group in model.optim.param_groups:
        group["lr"] = cfg["lr"]

    class EpochTimer(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds, self.cpu, self._start, self._cpu0 = 0.0, 0.0, 0.0, 0.0

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._start, self._cpu0 = time.perf_counter(), cpu_seconds()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.seconds += time.perf_counter() - self._start
            self.cpu += cpu_seconds() - self._cpu0

    timer = EpochTimer()
    model.fit(x_train, y_train, batch_size=cfg["batch_size"], epochs=cfg["epochs"], verbose=0, callbacks=[timer])
    rss, hwm = peak_rss_mib(), vm_hwm_mib()
    pred = model.predict(x_test, 8192)
    emit({"kind": "train", "library": "deepctr-torch", "model": args.model,
          "params": sum(p.numel() for p in model.parameters()),
          "samples": cfg["epochs"] * len(y_train), "seconds": timer.seconds,
          "steps": cfg["epochs"] * math.ceil(len(y_train) / cfg["batch_size"]),
          "peak_rss_mib": rss, "vm_hwm_mib": hwm,
          "auc": {t: _auc(y_test[:, i], pred[:, i]) for i, t in enumerate(TASKS)},
          "cpu_seconds": timer.cpu, "load_end": load_average()})


def worker_profile(args: argparse.Namespace, cfg: dict) -> None:
    """Where one mtlkit MMoE training step spends its time: a phase breakdown and the top ops."""
    setup, skip = _mtlkit_setup(cfg, "mmoe", args.data_dir)
    if skip:
        print(SKIP + skip, flush=True)
        return
    torch, model, tasks, table = setup
    from torch.profiler import ProfilerActivity, profile

    from mtlkit.balancing import BalancerSpec, build_balancer

    train = table("train")
    by_name = {t.name: t for t in tasks}
    balancer = build_balancer(BalancerSpec(), tasks)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], fused=True)  # as the trainer steps the census model (its table is dense)
    batches = train.batches(cfg["batch_size"], shuffle=True, seed=cfg["seed"])
    model.train()

    phases: dict[str, list[float]] = {"batch slice": [], "forward": [], "loss": [], "backward": [], "optimizer": []}

    def step(batch_iter, timed: bool) -> None:
        t0 = time.perf_counter()
        batch = next(batch_iter)[0]
        t1 = time.perf_counter()
        logits = model(batch.inputs)
        t2 = time.perf_counter()
        losses = {n: by_name[n].compute_loss(logits[n], batch.targets[n], None, batch.masks[n]) for n in TASKS}
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(losses, model)
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        if timed:
            for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                phases[key].append(dt)

    def forever():
        epoch = 0
        while True:
            yield from batches.epoch(epoch)
            epoch += 1

    cycle = forever()
    lines = []
    # The same steps at 1 thread and at the configured count: on a shared machine the gap shows
    # what waiting for a descheduled OpenMP thread at every parallel region costs.
    for threads in sorted({1, cfg["threads"]}):
        torch.set_num_threads(threads)
        for values in phases.values():
            values.clear()
        for _ in range(10):
            step(cycle, timed=False)
        n_steps = 60
        for _ in range(n_steps):
            step(cycle, timed=True)
        steps = sorted(sum(values[i] for values in phases.values()) for i in range(n_steps))
        medians = {key: sorted(values)[n_steps // 2] for key, values in phases.items()}
        lines.append(f"mtlkit MMoE step anatomy, {n_steps} steps of {cfg['batch_size']}, {threads} thread(s): "
                     f"median {1000 * steps[n_steps // 2]:.2f} ms/step = {cfg['batch_size'] / steps[n_steps // 2]:,.0f} samples/s "
                     f"(fastest step {1000 * steps[0]:.2f} ms, mean {1000 * sum(steps) / n_steps:.2f} ms); median per phase:")
        lines += [f"  {key:<12}{1000 * value:8.2f} ms  {100 * value / sum(medians.values()):5.1f}%" for key, value in medians.items()]
    torch.set_num_threads(cfg["threads"])
    lines += _profile_isolated(torch, model, train, cfg)

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(30):
            step(cycle, timed=False)
    table_text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12)
    emit({"kind": "profile", "anatomy": "\n".join(lines), "top_ops": table_text, "top_ops_by_shape": by_shape})


def _best_ms(fn, repeats: int = 30, rounds: int = 5) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 1000 * best


def _profile_isolated(torch, model, train, cfg: dict) -> list[str]:
    """Bounds and alternatives measured in isolation on the MMoE shapes (fwd+bwd unless said)."""
    batch = cfg["batch_size"]
    experts, width = cfg["experts"], cfg["expert_hidden"][0]
    in_dim = model.encoder.output_dim
    out = []
    # The floor: the expert layer's forward GEMM and its two backward GEMMs, nothing else.
    x = torch.randn(batch, in_dim, requires_grad=True)
    w = torch.randn(in_dim, experts * width, requires_grad=True)
    grad = torch.randn(batch, experts * width)

    def gemms():
        x.grad = w.grad = None
        (x @ w).backward(grad)

    ms = _best_ms(gemms)
    flops = 6 * batch * in_dim * experts * width
    out.append(f"  floor: expert layer GEMMs alone ([{batch},{in_dim}]x[{in_dim},{experts * width}] fwd + 2 bwd): "
               f"{ms:.2f} ms = {flops / ms / 1e6:.1f} GFLOP/s")
    padded = -(-in_dim // 16) * 16
    if padded != in_dim:
        xp = torch.randn(batch, padded, requires_grad=True)
        wp = torch.randn(padded, experts * width, requires_grad=True)

        def gemms_padded():
            xp.grad = wp.grad = None
            (xp @ wp).backward(grad)

        out.append(f"  the same GEMMs with the input width padded to {padded}: {_best_ms(gemms_padded):.2f} ms")
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for threads in sorted({1, cfg["threads"]}):
        torch.set_num_threads(threads)
        out.append(f"  1024x1024 torch.mm now, {threads} thread(s): {2 * n**3 / _best_ms(lambda: torch.mm(a, b), 10) / 1e6:.1f} GFLOP/s")
    torch.set_num_threads(cfg["threads"])
    # Whole model forward+backward (no batch slicing, no optimiser).
    fixed = train.take(slice(0, batch))

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        logits = model(fixed.inputs)
        sum(torch.nn.functional.binary_cross_entropy_with_logits(logits[t], fixed.targets[t]) for t in TASKS).backward()

    ms_model = _best_ms(fwd_bwd, 10, 3)
    model._factored_input = lambda inputs: None  # the first layer over the materialised encoder output
    ms_usual = _best_ms(fwd_bwd, 10, 3)
    del model._factored_input
    out.append(f"  model forward+backward on a fixed batch: {ms_model:.2f} ms; with the first layer over the "
               f"materialised encoder output (no vocabulary space): {ms_usual:.2f} ms, {100 * ms / ms_usual:.0f}% of it the floor above")
    # The optimiser: default Adam (per-parameter loop on CPU) vs foreach vs fused.
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    for label, kwargs in (("Adam default", {}), ("Adam foreach=True", {"foreach": True}), ("Adam fused=True", {"fused": True})):
        try:
            opt = torch.optim.Adam(params, lr=1e-9, **kwargs)
            out.append(f"  {label:<18}: {_best_ms(opt.step, 20, 3):.2f} ms/step ({len(params)} parameter tensors)")
        except (RuntimeError, TypeError) as error:
            out.append(f"  {label:<18}: unavailable ({str(error).splitlines()[0]})")
    model.zero_grad(set_to_none=True)
    # Gate mixing: bmm of B tiny (G,E)x(E,d) products vs broadcast multiply-sum.
    g = torch.randn(batch, len(TASKS), experts, requires_grad=True)
    e = torch.randn(batch, experts, width, requires_grad=True)
    gd = torch.randn(batch, len(TASKS), width)

    def mix_bmm():
        g.grad = e.grad = None
        torch.bmm(g, e).backward(gd)

    def mix_broadcast():
        g.grad = e.grad = None
        (g.unsqueeze(-1) * e.unsqueeze(1)).sum(2).backward(gd)

    out.append(f"  gate mixing fwd+bwd: bmm {_best_ms(mix_bmm):.2f} ms, broadcast-sum {_best_ms(mix_broadcast):.2f} ms")
    # Shared-input expert layer: permute+reshape copy of the (E,in,out) weight each call vs a stored (in, E*out) weight.
    w3 = torch.randn(experts, in_dim, width, requires_grad=True)

    def permuted():
        x.grad = w3.grad = None
        (x @ w3.permute(1, 0, 2).reshape(in_dim, experts * width)).backward(grad)

    out.append(f"  expert layer fwd+bwd with the permute/reshape weight copy: {_best_ms(permuted):.2f} ms "
               f"(vs {ms:.2f} ms with a stored (in, E*out) weight)")
    # Experts and gates read the same input: two GEMMs (as now) vs one GEMM over concatenated weights.
    gates_w = torch.randn(in_dim, len(TASKS) * experts, requires_grad=True)
    both_w = torch.randn(in_dim, experts * width + len(TASKS) * experts, requires_grad=True)
    grad_both = torch.randn(batch, experts * width + len(TASKS) * experts)

    def separate():
        x.grad = w.grad = gates_w.grad = None
        torch.cat([x @ w, x @ gates_w], dim=1).backward(grad_both)

    def fused():
        x.grad = both_w.grad = None
        (x @ both_w).backward(grad_both)

    out.append(f"  experts + gates fwd+bwd: two GEMMs {_best_ms(separate):.2f} ms, one concatenated GEMM {_best_ms(fused):.2f} ms")
    # Embedding backward: F.embedding (embedding_dense_backward) vs index_select (index_add_ backward).
    table = model.encoder.embedding.table.weight.detach().clone().requires_grad_(True)
    ids = (fixed.inputs["categorical"] + model.encoder.embedding.offsets).contiguous()
    grad_emb = torch.randn(*ids.shape, table.shape[1])

    def embedding():
        table.grad = None
        torch.nn.functional.embedding(ids, table).backward(grad_emb)

    def index_select():
        table.grad = None
        table.index_select(0, ids.view(-1)).view(grad_emb.shape).backward(grad_emb)

    out.append(f"  embedding gather fwd+bwd ({tuple(ids.shape)} ids, {table.shape[0]}-row table): F.embedding "
               f"{_best_ms(embedding):.2f} ms, index_select {_best_ms(index_select):.2f} ms")
    return out


# ---------------------------------------------------------------------------------------------
# Parent: orchestration and the table (no torch import here, so children's RSS is their own)
# ---------------------------------------------------------------------------------------------


def run_worker(role: list[str], args: argparse.Namespace, data_dir: str, config: dict) -> tuple[dict | None, str]:
    env = dict(os.environ)
    threads = str(args.threads)
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
                "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"})
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", *role, "--data-dir", data_dir,
               "--root", args.root, "--config", json.dumps(config), "--threads", threads]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.perf_counter() - started
    log = proc.stdout + proc.stderr
    if args.verbose:
        print(f"--- worker {' '.join(role)} ({wall:.0f}s) ---\n{log.rstrip()}\n---", flush=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            payload = json.loads(line[len(RESULT):])
            payload["wall_seconds"] = wall
            return payload, ""
        if line.startswith(SKIP):
            return None, line[len(SKIP):]
    tail = "\n".join(log.strip().splitlines()[-6:])
    return None, f"worker failed (exit {proc.returncode}):\n{tail}"


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def aggregate(runs: list[dict], input_dim: int, cfg: dict) -> dict:
    """One row from the repeats of a (library, model): best and median rate, mean AUC, max RSS."""
    rates = sorted(r["samples"] / r["seconds"] for r in runs)
    best = max(runs, key=lambda r: r["samples"] / r["seconds"])
    aucs = {t: [r["auc"][t] for r in runs] for t in TASKS}
    mean = {t: sum(v) / len(v) for t, v in aucs.items()}
    spread = {t: (math.sqrt(sum((x - mean[t]) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None) for t, v in aucs.items()}
    rate = rates[-1]
    return {
        "library": best["library"], "model": best["model"], "params": best["params"], "repeats": len(runs),
        "rate": rate, "rate_median": rates[len(rates) // 2] if len(rates) % 2 else (rates[len(rates) // 2 - 1] + rates[len(rates) // 2]) / 2,
        "ms_step": 1000 * best["seconds"] / best["steps"], "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "auc": mean, "auc_std": spread, "cpu_pct": 100 * best["cpu_seconds"] / best["seconds"], "load": best.get("load_end"),
        "gflops": 6 * forward_macs(best["model"], input_dim, cfg) * rate / 1e9,
        "counted_flops_per_sample": best.get("counted_flops_per_sample"),
    }


def _auc_text(row: dict, task: str) -> str:
    std = row["auc_std"][task]
    return f"{row['auc'][task]:.4f}" + ("" if std is None else f"±{std:.4f}")


def print_table(rows: dict, peak: float | None) -> None:
    repeats = max((r["repeats"] for r in rows.values()), default=1)
    median = repeats > 1
    auc_width = 16 if median else 13
    header = (f"{'library':<15}{'model':<15}{'params':>8}{'samples/s':>11}" + (f"{'(median)':>10}" if median else "")
              + f"{'ms/step':>9}{'x rechub':>10}{'x deepctr':>10}{'peak RSS MiB':>14}{'AUC income':>{auc_width}}"
              f"{'AUC marital':>{auc_width}}{'GFLOP/s':>9}{'% peak':>8}{'CPU%':>6}{'load':>6}")
    print(header)
    print("-" * len(header))
    for model in MODELS:
        for library in LIBRARIES:
            r = rows.get((library, model))
            if r is None:
                continue
            ratios = [r["rate"] / rows[(o, model)]["rate"] if (o, model) in rows else None for o in ("torch-rechub", "deepctr-torch")]
            print(f"{LIBRARY_LABEL[library]:<15}{MODEL_LABEL[library][model]:<15}{r['params']:>8}{r['rate']:>11.0f}"
                  + (f"{r['rate_median']:>10.0f}" if median else "")
                  + f"{r['ms_step']:>9.2f}{_fmt(ratios[0], '.2f'):>10}{_fmt(ratios[1], '.2f'):>10}{r['peak_rss_mib']:>14.0f}"
                  f"{_auc_text(r, 'income'):>{auc_width}}{_auc_text(r, 'marital'):>{auc_width}}"
                  f"{r['gflops']:>9.1f}{_fmt(None if peak is None else 100 * r['gflops'] / peak, '.1f'):>8}"
                  f"{_fmt(r['cpu_pct'], '.0f'):>6}{_fmt(r['load'], '.1f'):>6}")


def print_targets(rows: dict, input_dim: int, cfg: dict, peak: float | None, matmul: list[dict], tolerance: float) -> None:
    mine = rows.get(("mtlkit", "mmoe"))
    print()
    if mine is None:
        print("targets: no mtlkit MMoE row, nothing to compare")
        return
    for other, need in (("torch-rechub", 3.0), ("deepctr-torch", 2.0)):
        o = rows.get((other, "mmoe"))
        if o is None:
            print(f"target mtlkit MMoE >= {need:.0f}x {LIBRARY_LABEL[other]} MMOE: not measured")
            continue
        ratio = mine["rate"] / o["rate"]
        auc_ok = all(mine["auc"][t] >= o["auc"][t] - tolerance for t in TASKS)
        diffs = ", ".join(f"{t} {mine['auc'][t] - o['auc'][t]:+.4f}" for t in TASKS)
        median = f" (medians: {mine['rate_median'] / o['rate_median']:.2f}x)" if mine["repeats"] > 1 else ""
        print(f"target mtlkit MMoE >= {need:.0f}x {LIBRARY_LABEL[other]} MMOE: {ratio:.2f}x{median} "
              f"-> {'met' if ratio >= need else 'MISSED'}; test AUC difference {diffs} "
              f"-> {'equal or better' if auc_ok else 'WORSE'} (tolerance {tolerance})")
    macs = forward_macs("mmoe", input_dim, cfg)
    peaks = ", ".join(f"{m['gflops_best']:.1f}" for m in matmul)
    singles = ", ".join(f"{m['gflops_1thread']:.1f}" for m in matmul)
    print(f"mtlkit MMoE: {macs:,} multiply-adds per sample forward -> {6 * macs / 1e6:.2f} MFLOP per sample "
          f"forward+backward (x3); torch.utils.flop_counter counts {_fmt(mine.get('counted_flops_per_sample'), ',.0f')} "
          f"FLOP per sample for one training step")
    print(f"1024x1024 fp32 torch.mm, best of 9x20 calls, {cfg['threads']} threads: {peaks} GFLOP/s "
          f"(before the models and after each round; 1 thread: {singles})")
    if peak:
        share = mine["gflops"] / peak
        verdict = ("not judged: mtlkit's precision is not fp32" if cfg["precision"] != "fp32"  # bf16 GEMMs outrun the fp32 peak
                   else "met" if share >= 0.6 else "MISSED")
        print(f"target achieved GFLOP/s >= 60% of matmul peak: {mine['gflops']:.1f} / {peak:.1f} = {100 * share:.1f}% -> {verdict}")
        counted = mine.get("counted_flops_per_sample")
        if counted and counted < 0.9 * 6 * macs:  # vocabulary space: less arithmetic than the architecture's count
            executed = mine["gflops"] * counted / (6 * macs)
            print(f"  (architecture FLOPs per second: mtlkit executes {counted / (6 * macs):.0%} of them, the small categorical "
                  f"fields' share of the first layer computed in vocabulary space; its executed arithmetic runs at "
                  f"{executed:.1f} GFLOP/s = {100 * executed / peak:.1f}% of the peak)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/census_income_kdd", help="census files (see mtlkit.data.datasets.census)")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=None)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch and MMoE only (unless --models/--epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "auto"], default="fp32",
                        help="mtlkit's train.precision (the peers and the matmul peak are fp32; auto: bf16 where native)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="interleaved rounds (seed, seed+1, ...); the table shows each row's fastest round")
    parser.add_argument("--ple-levels", type=int, default=2)
    parser.add_argument("--ple-specific", type=int, default=3, help="task-specific experts per task and level")
    parser.add_argument("--ple-shared", type=int, default=2, help="shared experts per level")
    parser.add_argument("--bottom", type=int, nargs="+", default=[512], help="shared-bottom hidden sizes")
    parser.add_argument("--train-rows", type=int, default=None, help="train on the first N rows only (smoke tests)")
    parser.add_argument("--auc-tolerance", type=float, default=0.002, help="'equal' test AUC: within this of the other")
    parser.add_argument("--profile", action="store_true", help="also profile mtlkit MMoE's training step")
    parser.add_argument("--batch-norm", action="store_true",
                        help="mtlkit with BatchNorm after every expert/bottom and tower layer (batch_norm, tower_batch_norm), "
                             "the architecture torch-rechub always builds")
    parser.add_argument("--data-dir", default=None, help="where the encoded arrays go (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    parser.add_argument("--verbose", action="store_true", help="show every worker's output")
    parser.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 1 if args.quick else 3
    if args.models is None:
        args.models = ["mmoe"] if args.quick else list(MODELS)
    if args.libraries is None:
        args.libraries = list(LIBRARIES)

    if args.worker:
        cfg = json.loads(args.config)
        role = args.worker[0]
        if role == "prepare":
            worker_prepare(args)
        elif role == "matmul":
            worker_matmul(args)
        elif role == "profile":
            worker_profile(args, cfg)
        else:
            args.model = args.worker[1]
            {"mtlkit": worker_mtlkit, "torch-rechub": worker_rechub, "deepctr-torch": worker_deepctr}[role](args, cfg)
        return

    cfg = common_config(args)
    print(f"CPU: {cpu_description()}")
    with tempfile.TemporaryDirectory(prefix="mtlkit-compare-") as tmp:
        data_dir = args.data_dir or tmp
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        prepared, error = run_worker(["prepare"], args, data_dir, cfg)
        if prepared is None:
            raise SystemExit(f"could not prepare census data: {error}")
        input_dim = len(prepared["categorical"]) * cfg["embedding_dim"] + len(prepared["numeric"])
        print(f"census-income group 1: {prepared['rows']['train']:,} train / {prepared['rows']['validation']:,} validation / "
              f"{prepared['rows']['test']:,} test rows; {len(prepared['categorical'])} categorical fields x "
              f"{cfg['embedding_dim']} + {len(prepared['numeric'])} numeric = input width {input_dim}; "
              f"prepared in {prepared['seconds']:.1f}s (not timed)")
        print(f"config: batch {cfg['batch_size']}, Adam lr {cfg['lr']}, {cfg['epochs']} epoch(s), {cfg['threads']} threads; "
              f"MMoE {cfg['experts']} experts x {cfg['expert_hidden']}; PLE {cfg['ple_levels']} levels x "
              f"({cfg['ple_specific']} per task + {cfg['ple_shared']} shared) x {cfg['expert_hidden']}; "
              f"shared-bottom {cfg['bottom']}; towers {cfg['tower']}; mtlkit precision {cfg['precision']} (peers fp32)", flush=True)

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        if load > 0.5:
            print(f"note: 1-minute load average {load:.1f} before the first model on {os.cpu_count()} CPUs: other processes "
                  f"compete for the cores, so absolute times (and ratios between rows run at different moments) carry that noise; "
                  f"the CPU% and load columns show it per row (--repeats N keeps each row's fastest of N rounds)", flush=True)
        matmul = []

        def measure_matmul() -> None:
            result, _ = run_worker(["matmul"], args, data_dir, cfg)
            if result:
                matmul.append(result)

        measure_matmul()
        runs: dict[tuple[str, str], list[dict]] = {}
        for round_ in range(args.repeats):
            # Other seeds each round; the library order rotates so no library always runs first.
            round_cfg = {**cfg, "seed": cfg["seed"] + round_}
            order = args.libraries[round_ % len(args.libraries):] + args.libraries[: round_ % len(args.libraries)]
            if args.repeats > 1:
                print(f"round {round_ + 1}/{args.repeats} (seed {round_cfg['seed']})", flush=True)
            for model in args.models:
                for library in order:
                    label = f"{LIBRARY_LABEL[library]} {MODEL_LABEL[library][model]}"
                    result, error = run_worker([library, model], args, data_dir, round_cfg)
                    if result is None:
                        print(f"  {label}: skipped: {error}", flush=True)
                        continue
                    runs.setdefault((library, model), []).append(result)
                    print(f"  {label}: {result['samples'] / result['seconds']:,.0f} samples/s ({result['seconds']:.1f}s training, "
                          f"{result['wall_seconds']:.0f}s in all, CPU {100 * result['cpu_seconds'] / result['seconds']:.0f}%, "
                          f"load {result['load_end']:.1f})", flush=True)
            measure_matmul()
        peak = max((m["gflops_best"] for m in matmul), default=None)
        rows = {key: aggregate(value, input_dim, cfg) for key, value in runs.items()}

        print()
        if args.repeats > 1:
            print(f"samples/s, ms/step, GFLOP/s, CPU% and load: the fastest of {args.repeats} rounds (interference on a shared "
                  f"machine only slows a run down); median rate alongside; AUC: mean ± standard deviation over the rounds' seeds")
        print_table(rows, peak)
        print_targets(rows, input_dim, cfg, peak, matmul, args.auc_tolerance)
        for key, value in runs.items():
            for r in value:
                if r.get("vm_hwm_mib") and abs(r["vm_hwm_mib"] - r["peak_rss_mib"]) > 0.05 * r["peak_rss_mib"]:
                    print(f"note: {key}: ru_maxrss {r['peak_rss_mib']:.0f} MiB vs VmHWM {r['vm_hwm_mib']:.0f} MiB")

        if args.profile:
            result, error = run_worker(["profile"], args, data_dir, cfg)
            print()
            if result is None:
                print(f"profile skipped: {error}")
            else:
                print(result["anatomy"])
                print("\ntorch.profiler, 30 training steps, top ops by self CPU time:")
                print(result["top_ops"])
                print("by input shape:")
                print(result["top_ops_by_shape"])


if __name__ == "__main__":
    main()
