"""What fusing an MoE's small ops buys: one GEMM for the experts' first layer and all gates, the
towers of all tasks as one batched matmul, and no input gradient for the numeric columns (issue 14,
item 6), step time side by side.

The model is compare_libraries.py's census MMoE (32 categorical fields of the census vocabulary
sizes embedded in 16 dims + 7 numeric = 519 inputs, 8 experts of [64], towers [32], batch 1024,
the trainer's optimisers: fused Adam, and ``--embedding-optimizer``'s for the table) with ``--tasks``
binary tasks (census group 1 has 2; more show how the towers scale).
Inputs and labels are random draws of the census shapes: a step's cost does not depend on the
values. Three variants of the same model (same weights) are timed in interleaved rounds:

* ``apart``: experts and gates as separate maps, then each task's tower on its own;
* ``fused gates``: :func:`mtlkit.nn.experts.shared_input_linears`, towers one by one;
* ``fused + stacked towers``: also :mod:`mtlkit.models.stacked_heads`;
* ``+ no numeric input gradient``: also :func:`mtlkit.nn.input_affine.input_affine` (mtlkit's
  default now): the first layer's backward computes the input gradient of the 512 embedding columns
  only, not of all 519 (the 7 numeric columns are data), so its GEMM's output is 512 wide;
* ``+ small fields in vocabulary space``: also :mod:`mtlkit.nn.vocabulary_affine` (mtlkit's
  default now): every census field has fewer than 1024 / 4 values, so the first layer is
  ``Σ_f (E_f W_f)[id_f]`` — vocabulary-sized GEMMs and one ``embedding_bag`` sum — plus the numeric
  columns' GEMM, and the encoder output is never materialised;
* ``the same under torch.compile``: the model's forward compiled (``train.compile: true``; the
  compilation happens in the warm-up round, untimed). A graph being captured takes the usual
  path, so this compiles the ``+ no numeric input gradient`` model.

The first three variants compute the full input gradient (mtlkit before ``input_affine``); the
first four compute the first layer over the encoder output (mtlkit before vocabulary space).

Each row: the median and the fastest round's median ms per training step (forward, loss,
backward, fused Adam), samples/s, the ratio to ``apart`` and the achieved GFLOP/s against the
1024x1024 fp32 matmul peak measured in the same process (FLOPs as compare_libraries.py counts them: the
architecture's, so the vocabulary-space row, which executes far fewer, reads as architecture work per second).
With ``--threads 1`` the step times are the thread's CPU time, which other processes on a shared
machine do not inflate; with more threads, wall-clock time.

    python benchmarks/moe_fusion.py                     # 2 threads, 2 tasks
    python benchmarks/moe_fusion.py --threads 1 --tasks 2 6
    python benchmarks/moe_fusion.py --precision fp32 bf16      # vocabulary space in fp32 next to bf16 autocast
    python benchmarks/moe_fusion.py --embedding-optimizer rowwise_adagrad   # sparse table gradients
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator

import torch
from compare_libraries import forward_macs
from machine import cpu_description

from mtlkit.data.schema import FittedCategorical, FittedNumeric, FittedSchema
from mtlkit.models import ModelSpec, MultiTaskModel, build_model
from mtlkit.models.mmoe import MixtureOfExperts
from mtlkit.nn.experts import mix
from mtlkit.optim import EmbeddingOptimizerSpec, build_optimizers
from mtlkit.tasks import Task

CENSUS_CARDINALITIES = [10, 53, 48, 18, 4, 25, 16, 6, 11, 3, 4, 7, 9, 7, 7, 52, 39, 9, 11, 10, 11, 4, 5, 6, 44, 44, 44, 6, 4, 4, 4, 3]
NUMERIC = 7
VARIANTS = ["apart", "fused gates", "fused + stacked towers", "+ no numeric input gradient", "+ small fields in vocabulary space",
            "the same under torch.compile"]
FULL_INPUT_GRADIENT = VARIANTS[:3]
ENCODER_OUTPUT = VARIANTS[:4]


def _apart(self: MixtureOfExperts, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """MixtureOfExperts.forward as it was: the experts and the gates as two maps of the same input."""
    h = self.bottom(x)
    fused = mix(self.gates(h), self.experts(h))
    return {name: fused[:, self._gate_of(i)] for i, name in enumerate(self.task_names)}


@contextlib.contextmanager
def variant(model: MultiTaskModel, name: str) -> Iterator[None]:
    stacked, forward = model._stacked, MixtureOfExperts.forward
    model._stacked = stacked and name in VARIANTS[2:]
    if name == "apart":
        MixtureOfExperts.forward = _apart  # type: ignore[method-assign]  # the benchmark's "before", restored below
    if name in FULL_INPUT_GRADIENT:  # the numeric columns differentiated like the rest (an instance attribute, deleted below)
        model._constant_columns = lambda inputs: None  # type: ignore[method-assign]
    if name in ENCODER_OUTPUT:  # the first layer over the materialised encoder output
        model._factored_input = lambda inputs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        model._stacked, MixtureOfExperts.forward = stacked, forward  # type: ignore[method-assign]
        model.__dict__.pop("_constant_columns", None)
        model.__dict__.pop("_factored_input", None)


def census_like(tasks: list[Task]) -> tuple[MultiTaskModel, FittedSchema]:
    schema = FittedSchema(categorical=[FittedCategorical(f"c{i}", [], n - 1) for i, n in enumerate(CENSUS_CARDINALITIES)],
                          numeric=[FittedNumeric(f"n{i}", "standard", None, 0.0, 1.0, False) for i in range(NUMERIC)])
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="mmoe", options={"experts": 8, "expert_hidden": [64]}, embedding_dim=16, tower=[32]),
                        schema, tasks)
    return model, schema


def matmul_peak(clock) -> float:
    """GFLOP/s of a 1024x1024 fp32 ``torch.mm``, best of 9 rounds, on the steps' clock."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(9):
        start = clock()
        for _ in range(20):
            torch.mm(a, b)
        best = min(best, (clock() - start) / 20)
    return 2 * 1024**3 / best / 1e9


def measure(n_tasks: int, precision: str, args: argparse.Namespace) -> None:
    tasks = [Task(name=f"task{i}", kind="binary") for i in range(n_tasks)]
    model, schema = census_like(tasks)
    model.train()
    # the trainer's optimisers: fused Adam for the dense parameters, the table's own (none for ``dense``)
    optimizer = build_optimizers(model, EmbeddingOptimizerSpec(name=args.embedding_optimizer), lr=1e-3)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(8):
        categorical = torch.stack([torch.randint(1, n, (args.batch_size,), generator=g) for n in CENSUS_CARDINALITIES], 1)
        batches.append(({"categorical": categorical, "numeric": torch.randn(args.batch_size, NUMERIC, generator=g)},
                        {t.name: torch.randint(0, 2, (args.batch_size,), generator=g).float() for t in tasks}))
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    compiled = torch.compile(model)

    def step(i: int, name: str) -> float:
        inputs, targets = batches[i % len(batches)]
        start = clock()
        with autocast:
            logits = (compiled if name == VARIANTS[-1] else model)(inputs)
            loss = sum(t.compute_loss(logits[t.name], targets[t.name], None, None) for t in tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]  # a sum of tensors
        optimizer.step()
        return clock() - start

    rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds + 1):  # round 0 warms every variant up
        for name in VARIANTS:
            with variant(model, name):
                times = [step(i, name) for i in range(args.steps)]
            if r:
                rounds[name].append(statistics.median(times))
    peak = matmul_peak(clock)
    flops = 6 * forward_macs("mmoe", len(CENSUS_CARDINALITIES) * 16 + NUMERIC,
                             {"experts": 8, "expert_hidden": [64], "tower": [32]}, n_tasks) * args.batch_size
    base = statistics.median(rounds["apart"])
    print(f"\n{n_tasks} tasks, {precision}, embedding tables: {args.embedding_optimizer}, batch {args.batch_size}, "
          f"{args.threads} thread(s); 1024x1024 fp32 matmul peak {peak:.1f} GFLOP/s")
    print("| variant | ms/step (median of rounds) | fastest round | samples/s | vs apart | GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    for name in VARIANTS:
        median, fastest = statistics.median(rounds[name]), min(rounds[name])
        gflops = flops / median / 1e9
        print(f"| {name} | {1e3 * median:.2f} | {1e3 * fastest:.2f} | {args.batch_size / median:,.0f} | {base / median:.2f}x | "
              f"{gflops:.1f} | {100 * gflops / peak:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="bf16: the step under CPU autocast (mtlkit's precision: auto on a BF16 CPU; vocabulary space is off there)")
    parser.add_argument("--embedding-optimizer", default="dense",
                        help="the table's optimiser (model.embedding_optimizer name): dense, rowwise_adagrad, lazy_adam, sgd")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15, help="steps per variant per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}")
    for precision in args.precision:
        for n in args.tasks:
            measure(n, precision, args)


if __name__ == "__main__":
    main()
