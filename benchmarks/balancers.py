"""Cost of one training step of every balancer, relative to equal weighting (``fixed``).

A synthetic ranking-style problem (categorical + numeric features; binary and regression tasks,
one binary task masked to the rows of another, as CVR is to clicks) with ``T = 2`` (MMoE if that
backbone is registered, else shared-bottom) and ``T = 5`` (shared-bottom), built with
``mtlkit.models.build_model``. One step is what the trainer does per batch: forward, masked task
losses, ``balancer.backward``, Adam step. Every method starts from the same weights and sees the
same batches; rounds are interleaved (method A, B, …, A, B, …) and the median ms/step over rounds
is reported, which keeps drift on a shared machine out of the ratios.

LibMTL (``pip install --no-deps LibMTL``: its requirements would replace torch) is timed on the
same model and batches when importable. Its package ``__init__`` imports torchvision, which is not
installed, so only ``LibMTL.weighting`` is loaded; each method runs through a small adapter that
supplies what LibMTL's ``AbsWeighting`` expects from its trainer (parameter-gradient mode). GradDrop
is left out there: LibMTL implements it only on representation gradients (``rep_grad=True``).
MoCo, FairGrad, STCH, ExcessMTL, MoDo and SDMGrad (LibMTL 1.1.5) are in the mtlkit column; MoDo
and SDMGrad reuse the last two steps' Jacobians as their independent batches
(:mod:`mtlkit.balancing.stale_batches`), so their step costs one Jacobian, not three.

    python benchmarks/balancers.py
    python benchmarks/balancers.py --tasks 5 --methods fixed mgda upgrad --steps 20 --rounds 5
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
import types

import numpy as np
import pyarrow as pa
import torch

from mtlkit.balancing import BALANCERS, BalancerSpec, build_balancer
from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.models import BACKBONES, ModelSpec, build_model
from mtlkit.tasks import Task, TaskMask

METHOD_OPTIONS = {"uncertainty": {"kinds": {}, "default_kind": "classification"}}
# mtlkit name -> (LibMTL class, its backward kwargs)
LIBMTL = {
    "fixed": ("EW", {}),
    "uncertainty": ("UW", {}),
    "dwa": ("DWA", {"T": 2.0}),
    "rlw": ("RLW", {"dist": "Normal"}),
    "gls": ("GLS", {}),
    "gradnorm": ("GradNorm", {"alpha": 1.5}),
    "mgda": ("MGDA", {"mgda_gn": "none"}),
    "pcgrad": ("PCGrad", {}),
    "cagrad": ("CAGrad", {"calpha": 0.4, "rescale": 1}),
    "imtl_g": ("IMTL", {}),
    "gradvac": ("GradVac", {"beta": 0.5}),
    # LibMTL 1.1.5's newer methods that run on one batch (MoDo and SDMGrad take three batches per
    # step there, STCH reads the trainer's epoch: not comparable through this adapter).
    "moco": ("MoCo", {"MoCo_beta": 0.5, "MoCo_beta_sigma": 0.5, "MoCo_gamma": 0.1, "MoCo_gamma_sigma": 0.5, "MoCo_rho": 0.0}),
    "fairgrad": ("FairGrad", {"FairGrad_alpha": 1.0}),
    "excess_mtl": ("ExcessMTL", {"robust_step_size": 1.0}),
}


def synthetic(n: int, t: int, seed: int = 0) -> tuple[pa.Table, list[Task]]:
    rng = np.random.default_rng(seed)
    columns = {f"c{i}": rng.integers(0, 1000, n) for i in range(4)}
    x = rng.standard_normal((n, 16))
    columns.update({f"x{i}": x[:, i] for i in range(16)})
    effects = [rng.standard_normal(1000) for _ in range(4)]
    base = sum(e[columns[f"c{i}"]] for i, e in enumerate(effects)) * 0.3
    tasks: list[Task] = []
    for k in range(t):
        signal = base + x @ rng.standard_normal(16) * 0.5
        if k % 2 == 0:
            columns[f"t{k}"] = (rng.random(n) < 1 / (1 + np.exp(-signal))).astype(np.int64)
            mask = TaskMask(column="t0") if k == 2 else None  # a CVR-like task, trained where t0 == 1
            tasks.append(Task(name=f"t{k}", kind="binary", mask=mask))
        else:
            columns[f"t{k}"] = signal + rng.standard_normal(n)
            tasks.append(Task(name=f"t{k}", kind="regression"))
    return pa.table(columns), tasks


def load_libmtl():
    """``LibMTL.weighting`` without running ``LibMTL/__init__`` (which needs torchvision)."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is None:
        raise ImportError("LibMTL is not installed (pip install --no-deps LibMTL)")
    package = types.ModuleType("LibMTL")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("LibMTL", package)
    return importlib.import_module("LibMTL.weighting")


class LibMTLBalancer(torch.nn.Module):
    """Runs a LibMTL weighting as an mtlkit balancer: ``backward(losses, model)``."""

    def __init__(self, weighting_module, class_name: str, kwargs: dict, task_names: list[str], model: torch.nn.Module) -> None:
        super().__init__()
        base = getattr(weighting_module, class_name)
        shared = [p for p in model.shared_parameters() if p.requires_grad]

        class Adapter(base):  # what LibMTL's Trainer would mix in
            def get_share_params(self):
                return iter(shared)

            def zero_grad_share_params(self):
                for p in shared:
                    if p.grad is not None:
                        p.grad.zero_()

        self.weighting = Adapter()
        w = self.weighting
        w.task_num, w.task_name, w.device, w.rep_grad = len(task_names), task_names, torch.device("cpu"), False
        w.epoch = 2  # past the warm-up epochs of GradNorm (1) and DWA (2)
        w.train_loss_buffer = np.ones((len(task_names), 10))
        w.init_param()
        self.task_names, self.kwargs, self.shared = task_names, kwargs, shared

    def backward(self, losses, model):
        for p in self.shared:  # LibMTL's _reset_grad writes into existing .grad tensors
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        zero = next(iter(losses.values())).new_zeros(())
        self.weighting.backward(torch.stack([losses.get(t, zero) for t in self.task_names]), **self.kwargs)


def time_methods(methods, t, backbone, args, libmtl):
    table, tasks = synthetic(args.rows, t)
    schema = SchemaSpec(categorical=[CategoricalFeature(name=f"c{i}") for i in range(4)],
                        numeric=[NumericFeature(name=f"x{i}") for i in range(16)]).fit(table)
    encoded = schema.encode(table, tasks)
    batches = [encoded.take(torch.randint(0, len(encoded), (args.batch_size,), generator=torch.Generator().manual_seed(s)))
               for s in range(args.steps)]
    options = {"expert_hidden": [128], "experts": 4} if backbone == "mmoe" else {"hidden": [256, 128]}
    spec = ModelSpec(backbone=backbone, options=options, embedding_dim=8, tower=[64])
    names = [task.name for task in tasks]
    by_name = {task.name: task for task in tasks}

    runs = {}
    for method in methods:
        torch.manual_seed(0)
        model = build_model(spec, schema, tasks)
        if method.startswith("libmtl:"):
            class_name, kwargs = LIBMTL[method[7:]]
            balancer = LibMTLBalancer(libmtl, class_name, kwargs, names, model)
        else:
            balancer = build_balancer(BalancerSpec(name=method, options=METHOD_OPTIONS.get(method, {})), tasks)
            if method == "mgda_ub":  # this loop calls the model directly, so set the representation hook
                from mtlkit.balancing.mgda_ub import expose_shared_features

                expose_shared_features(model, model.backbone.experts if backbone == "mmoe" else model.backbone.bottom)
        optimizer = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=1e-3)
        runs[method] = (model, balancer, optimizer)

    def step(method, batch):
        model, balancer, optimizer = runs[method]
        logits = model(batch.inputs)
        losses = {n: by_name[n].compute_loss(logits[n], batch.targets[n], batch.weights.get(n), batch.masks[n]) for n in names}
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(losses, model)
        optimizer.step()

    failed = {}
    for method in list(methods):  # warm-up: allocations, first-call costs, solver set-up
        try:
            for batch in batches[:3]:
                step(method, batch)
        except Exception as error:  # noqa: BLE001 - a third-party method that breaks is reported, not fatal
            if not method.startswith("libmtl:"):
                raise
            failed[method] = f"{type(error).__name__}: {error}"
            methods = [m for m in methods if m != method]
    per_round = {m: [] for m in methods}
    for _ in range(args.rounds):
        for method in methods:
            start = time.perf_counter()
            for batch in batches:
                step(method, batch)
            per_round[method].append(1000 * (time.perf_counter() - start) / len(batches))
    shared = sum(p.numel() for p in runs[methods[0]][0].shared_parameters())
    return {m: statistics.median(v) for m, v in per_round.items()}, shared, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--methods", nargs="+", default=None, help="mtlkit balancer names (default: all)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-libmtl", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods or ["fixed", *[m for m in BALANCERS.names() if m != "fixed"]]
    if "fixed" not in methods:
        methods = ["fixed", *methods]
    libmtl, why = None, "--no-libmtl"
    if not args.no_libmtl:
        try:
            libmtl = load_libmtl()
            why = ""
        except Exception as error:  # noqa: BLE001 - report and go on without it
            why = f"{type(error).__name__}: {error}"
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds (median ms/step); LibMTL: {'loaded (weighting only)' if libmtl else 'not timed - ' + why}")
    for t in args.tasks:
        backbone = "mmoe" if t == 2 and "mmoe" in BACKBONES else "shared_bottom"
        timed = list(methods)
        if libmtl is not None:
            timed += [f"libmtl:{m}" for m in methods if m in LIBMTL]
        ms, n_shared, failed = time_methods(timed, t, backbone, args, libmtl)
        base = ms["fixed"]
        print(f"\nT = {t}, backbone {backbone}, {n_shared} shared parameters")
        print(f"{'method':<14}{'mtlkit ms':>11}{'ratio':>8}" + (f"{'LibMTL ms':>12}{'ratio':>8}" if libmtl else ""))
        for m in methods:
            line = f"{m:<14}{ms[m]:>11.2f}{ms[m] / base:>8.2f}"
            if libmtl is not None and f"libmtl:{m}" in ms:
                line += f"{ms['libmtl:' + m]:>12.2f}{ms['libmtl:' + m] / base:>8.2f}"
            elif f"libmtl:{m}" in failed:
                line += f"{'fails':>12}"
            print(line)
        for m, why in failed.items():
            print(f"  {m} failed: {why[:150]}")


if __name__ == "__main__":
    main()
