"""Streaming Parquet: read-and-encode rate on one core against MMoE's training rate, and memory as the file grows.

For each size a short-video log (mtlkit.data.datasets.shortvideo: 5 categoricals, 3 numerics, a
20-item history, 2 bias features, 4 tasks) is written with row groups of ``--group-rows``. Every
measurement runs in a fresh child process pinned to one thread (torch and Arrow), so its peak RSS
is its own:

- **stream**: ``fit_schema_streaming`` (exact counts), then one shuffled epoch of
  :class:`~mtlkit.data.streaming.ParquetBatches` (``prefetch=0``: the reading, decoding, encoding
  and shuffle-buffer work all on the consuming thread) — rows/s and peak RSS;
- **in memory** (for contrast): ``read_table`` + ``SchemaSpec.fit`` + ``encode`` of the whole file — peak RSS;
- **training**: MMoE (4 experts of [64], towers [32], embeddings 8) on the smallest file's first
  ``--train-rows`` rows, samples/s of the trainer's loop fed from an in-memory table and from the
  stream (``prefetch=2``: a background thread reads ahead), measured in the same child.

The data path keeps up when its one-core rows/s exceeds the training samples/s; the streamed peak
RSS stays flat as rows grow (bounded by the buffer and one row group), while the in-memory one grows.

    python benchmarks/streaming.py                         # 0.5M, 1M, 2M rows
    python benchmarks/streaming.py --sizes 250000 500000 1000000 --no-in-memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def one_thread() -> None:
    import pyarrow as pa
    import torch

    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


def child_stream(path: str, batch_size: int, buffer_rows: int) -> dict:
    from mtlkit.data.datasets.shortvideo import shortvideo_schema, shortvideo_tasks
    from mtlkit.data.streaming import ParquetBatches, fit_schema_streaming

    base = peak_rss_mib()
    start = time.perf_counter()
    schema = fit_schema_streaming(shortvideo_schema(), path)
    fit_seconds = time.perf_counter() - start
    source = ParquetBatches(path, schema, shortvideo_tasks(), batch_size, buffer_rows=buffer_rows, prefetch=0)
    start, rows = time.perf_counter(), 0
    for (batch,) in source.epoch(0):
        rows += batch.size
    seconds = time.perf_counter() - start
    return {"rows": rows, "fit_seconds": fit_seconds, "rows_per_second": rows / seconds, "peak_buffer_rows": source.peak_buffer_rows,
            "rss_after_imports": base, "peak_rss": peak_rss_mib()}


def child_in_memory(path: str) -> dict:
    from mtlkit.data.datasets.shortvideo import shortvideo_schema, shortvideo_tasks
    from mtlkit.data.readers import read_table

    start = time.perf_counter()
    table = read_table(path)
    encoded = shortvideo_schema().fit(table).encode(table, shortvideo_tasks())
    return {"rows": len(encoded), "seconds": time.perf_counter() - start, "peak_rss": peak_rss_mib()}


class FirstSteps:
    """The first ``steps`` steps of each epoch of ``source``."""

    def __init__(self, source, steps: int) -> None:
        self.source, self.steps = source, min(steps, len(source))

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int = 0, start_step: int = 0):
        for step, batches in enumerate(self.source.epoch(epoch, start_step), start=start_step):
            if step >= self.steps:
                return
            yield batches


class Timed(FirstSteps):
    """Also records how long the first step took to arrive (the shuffle buffer's first fill)."""

    first_seconds = 0.0

    def epoch(self, epoch: int = 0, start_step: int = 0):
        start = time.perf_counter()
        for i, batches in enumerate(super().epoch(epoch, start_step)):
            if i == 0:
                self.first_seconds = time.perf_counter() - start
            yield batches


def child_train(path: str, batch_size: int, buffer_rows: int, train_rows: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from mtlkit.balancing import BalancerSpec, build_balancer
    from mtlkit.data.datasets.shortvideo import shortvideo_schema, shortvideo_tasks
    from mtlkit.data.streaming import ParquetBatches, fit_schema_streaming
    from mtlkit.models import ModelSpec, build_model
    from mtlkit.train import Trainer, TrainSpec

    tasks = shortvideo_tasks()
    schema = fit_schema_streaming(shortvideo_schema(), path)
    handle, parts, have = pq.ParquetFile(path), [], 0
    for i in range(handle.metadata.num_row_groups):
        if have >= train_rows:
            break
        parts.append(handle.read_row_group(i))
        have += parts[-1].num_rows
    table = schema.encode(pa.concat_tables(parts).slice(0, train_rows), tasks)
    validation = table.subset(torch.arange(2_000))
    steps = -(-len(table) // batch_size)

    def rate(source) -> float:
        torch.manual_seed(0)
        model = build_model(ModelSpec(backbone="mmoe", options={"experts": 4, "expert_hidden": [64]}, embedding_dim=8, tower=[32]), schema, tasks)
        spec = TrainSpec(epochs=1, batch_size=batch_size, progress=False, patience=None, threads=1)
        trainer = Trainer(model, tasks, build_balancer(BalancerSpec(), tasks), spec)
        trainer.fit(FirstSteps(table.batches(batch_size, shuffle=True), 10), validation)  # warm-up: first calls, allocation
        result = trainer.fit(source, validation)
        return result.train_samples / (result.train_seconds - getattr(source, "first_seconds", 0.0))

    in_memory = rate(table.batches(batch_size, shuffle=True))
    stream = Timed(ParquetBatches(path, schema, tasks, batch_size, buffer_rows=buffer_rows, prefetch=2), steps)
    streamed = rate(stream)
    return {"steps": steps, "in_memory": in_memory, "streamed": streamed, "first_seconds": stream.first_seconds}


def run_child(kind: str, **kwargs) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps({"kind": kind, **kwargs})],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 1_000_000, 2_000_000])
    parser.add_argument("--group-rows", type=int, default=100_000, help="Parquet row group size (rounded down to whole generator blocks)")
    parser.add_argument("--buffer-rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--train-rows", type=int, default=100_000, help="rows of the training-rate comparison")
    parser.add_argument("--no-in-memory", action="store_true", help="skip the in-memory RSS contrast")
    parser.add_argument("--out", default=None, help="where to write the logs (default: a temporary directory)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        one_thread()
        job = json.loads(args.child)
        kind = job.pop("kind")
        print(json.dumps({"stream": child_stream, "memory": child_in_memory, "train": child_train}[kind](**job)))
        return

    from mtlkit.data.datasets.shortvideo import generate_shortvideo

    out = Path(args.out or tempfile.mkdtemp(prefix="mtlkit-streaming-"))
    rows_out = []
    for size in sorted(args.sizes):
        path = out / f"shortvideo_{size}.parquet"
        if not path.exists():
            generate_shortvideo(path, size, chunk_rows=args.group_rows)
        import pyarrow.parquet as pq

        groups = pq.ParquetFile(path).metadata.num_row_groups
        stream = run_child("stream", path=str(path), batch_size=args.batch_size, buffer_rows=args.buffer_rows)
        memory = None if args.no_in_memory else run_child("memory", path=str(path))
        rows_out.append((size, path.stat().st_size / 2**20, groups, stream, memory))
    train = run_child("train", path=str(out / f"shortvideo_{min(args.sizes)}.parquet"), batch_size=args.batch_size,
                      buffer_rows=args.buffer_rows, train_rows=args.train_rows)

    print(f"short-video logs in {out}; batch {args.batch_size}, buffer {args.buffer_rows:,} rows, one thread per child")
    print(f"{'rows':>10}{'file MiB':>10}{'groups':>8}{'fit s':>8}{'stream rows/s':>15}{'buffer peak':>13}"
          f"{'stream RSS MiB':>16}{'in-memory RSS MiB':>19}")
    for size, mib, groups, stream, memory in rows_out:
        in_memory = f"{memory['peak_rss']:>19.0f}" if memory else f"{'-':>19}"
        print(f"{size:>10,}{mib:>10.1f}{groups:>8}{stream['fit_seconds']:>8.1f}{stream['rows_per_second']:>15,.0f}"
              f"{stream['peak_buffer_rows']:>13,}{stream['peak_rss']:>16.0f}{in_memory}")
    print(f"(RSS after imports in a child: {rows_out[0][3]['rss_after_imports']:.0f} MiB)")
    slowest = min(r[3]["rows_per_second"] for r in rows_out)
    print(f"MMoE training, one thread, first {args.train_rows:,} rows ({train['steps']} steps): "
          f"{train['in_memory']:,.0f} samples/s from memory, {train['streamed']:,.0f} samples/s streamed (prefetch 2; "
          f"after the first batch, which waited {train['first_seconds']:.2f} s for the buffer to fill)")
    print(f"read+encode on one core / training consumption: {slowest / train['in_memory']:.1f}x "
          f"({'keeps up' if slowest > train['in_memory'] else 'STARVES training'})")


if __name__ == "__main__":
    main()
