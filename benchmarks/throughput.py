"""Training throughput and peak memory on census-income group 1.

Times the trainer's training loop only (no evaluation, no checkpoints) over whole epochs and
prints samples/second and peak resident memory per backbone, measured one after another in the
same process so the ratios are comparable.

    python benchmarks/throughput.py --root ../shared/data/census_income_kdd
    python benchmarks/throughput.py --backbones shared_bottom single_task --epochs 2
    python benchmarks/throughput.py --backbones mmoe adatt home home_nofix pepnet dbmtl stem --train-rows 50000
    python benchmarks/throughput.py --backbones mmoe star metaheac --scenario sex --train-rows 50000

Each backbone runs with the first setting of its ``GRID`` entry in ``benchmarks/census.py`` (the
census protocol's default; ``home_nofix`` is HoME with its four fixes off). Multi-scenario backbones
(STAR, MetaHeac) read ``--scenario`` (a census categorical column) as ``model.scenario``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch
from census import ALIASES, GRID  # the census protocol's settings (benchmarks/census.py)
from machine import cpu_model

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.datasets.census import load_census
from mtlkit.models import BACKBONES, ModelSpec, build_model
from mtlkit.run import count_parameters
from mtlkit.train import Trainer, TrainSpec


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/census_income_kdd", help="census files (None: download)")
    parser.add_argument("--backbones", nargs="+", default=["shared_bottom"])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=None, help="time on the first N training rows only")
    parser.add_argument("--scenario", default="sex", help="model.scenario for the backbones that need one (star, metaheac)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_census(args.root, group=1)
    schema = data.schema.fit(data.train)
    train = schema.encode(data.train if args.train_rows is None else data.train.slice(0, args.train_rows), data.tasks)
    validation = schema.encode(data.validation.slice(0, 1000), data.tasks)
    print(f"CPU: {platform.processor() or platform.machine()} ({cpu_model()})")
    print(f"census group 1: {len(train)} training rows, batch {args.batch_size}, {args.threads} threads, "
          f"torch {torch.__version__}; peak RSS after loading data: {peak_rss_mib():.0f} MiB")
    print(f"{'backbone':<16}{'params':>10}{'samples/s':>12}{'ms/step':>10}{'peak RSS MiB':>14}")
    baseline = None
    for backbone in args.backbones:
        torch.manual_seed(0)
        options = GRID[backbone][0] if backbone in GRID else {}
        name = ALIASES.get(backbone, backbone)
        scenario = args.scenario if BACKBONES.get(name).needs_scenario else None
        spec = ModelSpec(backbone=name, options=options, embedding_dim=8, tower=[32], scenario=scenario)
        model = build_model(spec, schema, data.tasks)
        train_spec = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, progress=False, patience=None)
        trainer = Trainer(model, data.tasks, build_balancer(BalancerSpec(), data.tasks), train_spec)
        # One warm-up epoch on a slice so allocation and first-call costs are not timed.
        trainer.fit(train.subset(torch.arange(20 * args.batch_size)).batches(args.batch_size, shuffle=True), validation)
        start = time.perf_counter()
        result = trainer.fit(train.batches(args.batch_size, shuffle=True), validation)
        rate = result.train_samples / result.train_seconds
        steps = args.epochs * len(train.batches(args.batch_size))
        baseline = baseline or rate
        print(f"{backbone:<16}{count_parameters(model):>10}{rate:>12.0f}{1000 * result.train_seconds / steps:>10.2f}"
              f"{peak_rss_mib():>14.0f}   ({rate / baseline:.2f}x the first; {time.perf_counter() - start:.1f}s with eval)")


if __name__ == "__main__":
    main()
