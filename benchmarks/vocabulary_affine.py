"""When is a categorical field's share of the first layer cheaper in vocabulary space?

A backbone's first affine map over ``F`` embedded fields costs ``B × F·d × out`` multiply-adds per
pass (forward, input gradient, weight gradient). :mod:`mtlkit.nn.vocabulary_affine` computes a
field's share as ``(E_f W_f)[id_f]`` instead: ``|V_f| × d × out`` per GEMM plus an
``embedding_bag`` sum of ``B × F × out`` values. This sweeps the rows per field ``V`` (all ``F``
fields alike) at a fixed batch and times one forward + backward of the map from the encoder's ids
(gather, concatenation, GEMMs; the optimiser step excluded), three ways side by side:

* ``usual``: the encoder output materialised (one gather of all fields, numeric columns appended)
  and the first layer over it (``input_affine``, no gradient for the numeric columns);
* ``vocabulary space``: every field through :class:`~mtlkit.nn.vocabulary_affine.FactoredInput`
  (forced, whatever ``V``);
* ``mtlkit's choice``: what the model does by default, vocabulary space for a field when
  :func:`~mtlkit.nn.vocabulary_affine.qualifies` (``d >= 16`` and ``V <= B·d/128``).

Also the forward alone (inference) for the first two. The shape defaults to census MMoE's: 32
fields, ``d = 16``, 7 numeric columns, 8 experts of 64 + 2 gates of 8 = 528 output columns, batch 1024.

    python benchmarks/vocabulary_affine.py
    python benchmarks/vocabulary_affine.py --threads 1 --rows 16 64 256 1024
    python benchmarks/vocabulary_affine.py --dim 32 --rows 8 32 64 128 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import cpu_description

from mtlkit.nn import TabularEncoder
from mtlkit.nn.input_affine import input_affine
from mtlkit.nn.vocabulary_affine import qualifies


def timed(fn, clock, repeats: int, rounds: int) -> tuple[float, float]:
    """(median, fastest) over ``rounds`` of the mean of ``repeats`` calls, in ms."""
    fn()
    results = []
    for _ in range(rounds):
        start = clock()
        for _ in range(repeats):
            fn()
        results.append((clock() - start) / repeats * 1e3)
    return statistics.median(results), min(results)


def measure(rows: int, args: argparse.Namespace, clock) -> dict[str, tuple[float, float]]:
    torch.manual_seed(0)
    encoder = TabularEncoder([rows] * args.fields, args.numeric, args.dim)
    width = encoder.output_dim
    weight = (torch.randn(width, args.out) * width**-0.5).requires_grad_()
    bias = torch.zeros(args.out, requires_grad=True)
    inputs = {"categorical": torch.randint(0, rows, (args.batch_size, args.fields)),
              "numeric": torch.randn(args.batch_size, args.numeric)}
    upstream = torch.randn(args.batch_size, args.out)
    params = [*encoder.parameters(), weight, bias]

    def usual(backward: bool = True) -> None:
        y = input_affine(encoder(inputs), weight, bias, encoder.numeric_columns)
        if backward:
            y.backward(upstream)

    def factored(every_field: bool, backward: bool = True) -> None:
        x = encoder.factored(inputs, constant_numeric=True, every_field=every_field)
        y = x.affine(weight, bias) if x is not None else input_affine(encoder(inputs), weight, bias, encoder.numeric_columns)
        if backward:
            y.backward(upstream)

    def clear() -> None:
        for p in params:
            p.grad = None

    out: dict[str, tuple[float, float]] = {}
    for name, fn in (("usual", usual), ("vocabulary space", lambda: factored(True)),
                     ("mtlkit's choice", lambda: factored(False))):
        out[name] = timed(lambda fn=fn: (fn(), clear()), clock, args.repeats, args.rounds)
    with torch.no_grad():
        out["usual, forward"] = timed(lambda: usual(False), clock, args.repeats, args.rounds)
        out["vocabulary space, forward"] = timed(lambda: factored(True, False), clock, args.repeats, args.rounds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 32, 128, 256, 512, 1024, 4096],
                        help="rows per field (every field alike)")
    parser.add_argument("--fields", type=int, default=32)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--numeric", type=int, default=7)
    parser.add_argument("--out", type=int, default=528, help="output columns (census MMoE: 8x64 experts + 2x8 gates)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter  # 1 thread: CPU time, immune to neighbours
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {args.threads} thread(s)")
    print(f"first layer of {args.fields} fields x {args.dim} dims + {args.numeric} numeric -> {args.out} columns, batch "
          f"{args.batch_size}; ms per forward+backward, median of {args.rounds} rounds (fastest in brackets)")
    print("| rows per field | usual | vocabulary space | ratio | mtlkit's choice | forward: usual | forward: vocabulary space | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        r = measure(rows, args, clock)
        chosen = "vocabulary" if qualifies(rows, args.batch_size, args.dim) else "usual"
        default = r["mtlkit's choice"][0]
        print(f"| {rows:,} | {r['usual'][0]:.2f} ({r['usual'][1]:.2f}) | {r['vocabulary space'][0]:.2f} "
              f"({r['vocabulary space'][1]:.2f}) | {r['usual'][0] / r['vocabulary space'][0]:.2f}x | "
              f"{default:.2f} ({chosen}) | {r['usual, forward'][0]:.2f} | {r['vocabulary space, forward'][0]:.2f} | "
              f"{r['usual, forward'][0] / r['vocabulary space, forward'][0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
