"""Serving latency and throughput: one multi-task model against k single-task models.

Trains (briefly) on the synthetic short-video log, starts real `mtlkit serve` processes on loopback
ports and times HTTP /predict calls with batches of 1, 32 and 512 rows. A "prediction" is every
task's output for the batch, so the set-ups differ in what it takes to get all k tasks:

- ``multi-task``: the MMoE model of examples/shortvideo.yaml (DIN history, AITM, fused score):
  one server, one request.
- ``k single-task servers``: k one-task models (same features, an MLP of the experts' width),
  each in its own server process; the client sends the k requests one after another (the
  fused score is then the client's job). This is what "one model per objective" costs in
  production: k encodings, k forward passes, k round trips.
- ``single_task backbone``: the same k networks inside one model (``backbone: single_task``),
  one server, one request: the compute of k models without the k round trips.

With ``--backends pytorch onnx`` (or ``torchscript``) every set-up is also exported
(``mtlkit export``, to the work directory) and served from the export directory, so the PyTorch
run and its ONNX/TorchScript artifact are timed side by side, one after the other, in the same run.

Every server runs with ``--threads 1`` (PyTorch's and onnxruntime's intra-op threads); client and
servers share this machine's cores, so compare the rows of one run, not runs on different
machines. Latency is per prediction (all k tasks); rows/s = batch rows / latency, one request in
flight.

``--load`` measures throughput under concurrency instead: ``--clients`` (50) keep-alive
connections on loopback each send 1-row requests back to back (a raw HTTP/1.1 client, so the
client costs little of the shared cores), for at most ``--load-seconds`` and ``--load-requests``
per server, against the multi-task model served in one run by: ``unbatched`` (``--no-batching``:
one forward pass per request, as before micro-batching), ``batched`` (the defaults), and both with
``--workers 2``. It prints requests/s, p50/p99/max latency, errors, the server's RSS (all its
processes) before and at peak, the client's CPU share, the CPU model and the load average.

    python benchmarks/serve.py                       # ~2 minutes: 20k training rows, 3 s per cell
    python benchmarks/serve.py --seconds 1 --train-rows 8000
    python benchmarks/serve.py --backends pytorch onnx                  # each set-up from the run and its ONNX export
    python benchmarks/serve.py --backends pytorch onnx --setups multi-task --train-rows 2000 --seconds 0.5 --batches 1 32
    python benchmarks/serve.py --load                                    # ~1.5 minutes: 4 servers x 10 s
    python benchmarks/serve.py --load --backends onnx --load-servers unbatched batched --serve-options='--batch-wait-ms 1'
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from machine import cpu_model, free_port

REPO = Path(__file__).resolve().parents[1]
TASKS = ["click", "like", "share", "watch_time"]
FEATURE_COLUMNS = ["user_id", "item_id", "author_id", "category", "device", "duration", "item_popularity",
                   "user_activity", "hist_items"]


def configs(rows: int) -> dict[str, dict]:
    """The multi-task config (examples/shortvideo.yaml, shortened) and one config per single task."""
    base = yaml.safe_load((REPO / "examples" / "shortvideo.yaml").read_text())
    base["data"]["dataset_options"] = {"rows": rows, "seed": 0}
    base["train"].update(epochs=1, progress=False, precision="fp32")  # fp32: a config the pre-batching server (--before) reads too
    out = {"multi-task": base}
    tasks = {t["name"]: t for t in base["tasks"]}
    single_model = {"backbone": "single_task", "options": {"hidden": [64]}, "embedding_dim": 8, "tower": [32]}
    single_train = {**base["train"], "monitor": "loss"}
    for name in TASKS:
        out[f"single:{name}"] = {**base, "tasks": [tasks[name]], "model": single_model, "train": single_train}
    out["single_task backbone"] = {**base, "tasks": [tasks[n] for n in TASKS], "model": single_model, "train": single_train}
    return out


BACKENDS = ("pytorch", "onnx", "torchscript")
SETUPS = {  # --setups name → the runs it serves
    "multi-task": ["multi-task"],
    "single-servers": [f"single:{t}" for t in TASKS],
    "single-backbone": ["single_task backbone"],
}
SETUP_TITLES = {
    "multi-task": "multi-task (1 server, 1 request)",
    "single-servers": f"{len(TASKS)} single-task servers ({len(TASKS)} requests)",
    "single-backbone": f"single_task backbone ({len(TASKS)} nets, 1 request)",
}


def stem(name: str) -> str:
    return name.replace(":", "_").replace(" ", "_")


def train(directory: Path, rows: int, names: set[str]) -> dict[str, Path]:
    from mtlkit.config import load_config
    from mtlkit.run import train_run

    runs = {}
    for name, config in configs(rows).items():
        if name not in names:
            continue
        path = directory / (stem(name) + ".yaml")
        path.write_text(yaml.safe_dump(config))
        runs[name] = directory / path.stem
        if (runs[name] / "best.pt").exists():  # --work DIR of an earlier run
            print(f"  reusing {runs[name]}", flush=True)
            continue
        started = time.perf_counter()
        train_run(load_config(path), runs[name], progress=False)
        print(f"  trained {name:<22} in {time.perf_counter() - started:5.1f} s", flush=True)
    return runs


def export(directory: Path, runs: dict[str, Path], backends: list[str]) -> dict[tuple[str, str], Path]:
    """(run name, backend) → the directory `mtlkit serve` gets: the run itself for pytorch, else its export."""
    from mtlkit.export import export_run

    served = {}
    for name, run_dir in runs.items():
        for backend in backends:
            if backend == "pytorch":
                served[name, backend] = run_dir
                continue
            started = time.perf_counter()
            served[name, backend] = export_run(run_dir, backend, directory / "export" / f"{stem(name)}-{backend}").directory
            print(f"  exported {name:<21} to {backend} in {time.perf_counter() - started:5.1f} s", flush=True)
    return served




class Server:
    """`mtlkit serve DIR` (a run or an export directory) in its own process, on a loopback port."""

    def __init__(self, run_dir: Path, threads: int | None, options: Sequence[str] = (), source: Path | None = None) -> None:
        """``threads`` None: the server's default; ``source``: serve with the mtlkit package in this ``src`` directory."""
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-c", "from mtlkit.cli import main; main()", "serve", str(run_dir),
                   "--port", str(self.port), "--max-batch", "4096", *(["--threads", str(threads)] if threads else []), *options]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])} if source else None
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"mtlkit serve {run_dir} exited: {self.process.stderr.read() if self.process.stderr else ''}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"mtlkit serve {run_dir} did not come up in 120 s") from None
                time.sleep(0.2)

    def predict(self, body: bytes) -> None:
        response = self.client.post("/predict", content=body, headers={"content-type": "application/json"})
        if response.status_code != 200:
            raise SystemExit(f"{self.url}/predict: HTTP {response.status_code}: {response.text[:200]}")

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(10)


def measure(servers: list[Server], body: bytes, seconds: float, min_calls: int = 10) -> list[float]:
    """Latencies (s) of getting every task's prediction: one request per server, in sequence."""
    for _ in range(3):  # warm-up: first-call allocations, connection set-up
        for server in servers:
            server.predict(body)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    while len(latencies) < min_calls or time.perf_counter() < stop:
        start = time.perf_counter()
        for server in servers:
            server.predict(body)
        latencies.append(time.perf_counter() - start)
    return latencies



# -- --load: many concurrent 1-row clients ----------------------------------------------------------




def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (uvicorn's workers), MB, from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


async def _client(port: int, bodies: list[bytes], first: int, stop_at: float, budget: list[int],
                  latencies: list[float], statuses: dict[int, int]) -> None:
    """One keep-alive connection sending 1-row requests back to back (raw HTTP/1.1: the client stays cheap)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    k = first
    try:
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            body = bodies[k % len(bodies)]
            k += 1
            started = time.perf_counter()
            writer.write(b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def load(server: Server, bodies: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    """``clients`` connections for at most ``seconds`` and ``max_requests`` requests in all (after a 1 s warm-up)."""
    import asyncio
    import resource

    async def run(duration: float, budget: int) -> tuple[list[float], dict[int, int], float, float]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        peak = [tree_rss_mb(server.process.pid)]

        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], tree_rss_mb(server.process.pid))
                await asyncio.sleep(0.25)

        sampler = asyncio.ensure_future(sample())
        started = time.perf_counter()
        remaining = [budget]
        await asyncio.gather(*(_client(server.port, bodies, c * 7, started + duration, remaining, latencies, statuses)
                               for c in range(clients)))
        elapsed = time.perf_counter() - started
        sampler.cancel()
        return latencies, statuses, elapsed, peak[0]

    asyncio.run(run(1.0, 10 * clients))  # warm-up: connections, first-call allocations
    rss_before = tree_rss_mb(server.process.pid)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    latencies, statuses, elapsed, peak = asyncio.run(run(seconds, max_requests))
    after = resource.getrusage(resource.RUSAGE_SELF)
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "seconds": elapsed, "rps": len(lat) / elapsed, "p50": np.percentile(lat, 50),
            "p99": np.percentile(lat, 99), "max": lat.max(), "errors": sum(n for s, n in statuses.items() if s != 200),
            "statuses": statuses, "rss_before": rss_before, "rss_peak": peak,
            "client_cpu": (after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime) / elapsed}


BEFORE = "before (--before)"
LOAD_SERVERS = {  # --load-servers name → `mtlkit serve` options
    "unbatched": ["--no-batching"],  # one forward pass per request, in a thread pool (the server before micro-batching)
    "batched": [],  # micro-batching, `mtlkit serve`'s defaults
    "unbatched-2-workers": ["--no-batching", "--workers", "2"],
    "batched-2-workers": ["--workers", "2"],
}


def http_stack() -> str:
    """What uvicorn's "auto" picks in the servers (they inherit this environment)."""
    import importlib.util

    import uvicorn

    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {uvicorn.__version__} ({parser}, {loop})"


def readable_by(run_dir: Path, source: Path) -> Path:
    """A copy of ``run_dir`` whose config.yaml drops the keys the mtlkit in ``source`` does not know:
    settings added since (``train.log_every_seconds``, ``model.embedding_optimizer``,
    ``data.derived_targets``, ``init_from``, …), written with their defaults, that play no part in serving."""
    import shutil

    probe = ("import dataclasses, json; from mtlkit.data.schema import FittedCategorical, FittedNumeric, FittedSequence; "
             "from mtlkit.config import RunConfig, DataSpec; from mtlkit.models import ModelSpec; "
             "from mtlkit.tasks import Task; from mtlkit.train.spec import TrainSpec; print(json.dumps({'': list(RunConfig.model_fields), "
             "'train': list(TrainSpec.model_fields), 'data': list(DataSpec.model_fields), 'model': list(ModelSpec.model_fields), "
             "'tasks': list(Task.model_fields), "
             "**{'schema.' + c.__name__: [f.name for f in dataclasses.fields(c)] for c in (FittedCategorical, FittedNumeric, FittedSequence)}}))")
    known = json.loads(subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(source)},
                                      capture_output=True, text=True, check=True).stdout)
    copy = run_dir.with_name(run_dir.name + "-before")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config = {k: v for k, v in config.items() if k in known[""]}
    for section in ("train", "data", "model"):
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items() if k in known[section]}
    config["tasks"] = [{k: v for k, v in task.items() if k in known["tasks"]} for task in config.get("tasks") or []]
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    schema = json.loads((copy / "schema.json").read_text())  # fitted features: fields added since dropped too
    for key, cls in (("categorical", "FittedCategorical"), ("numeric", "FittedNumeric"), ("sequences", "FittedSequence"),
                     ("bias", "FittedCategorical")):
        schema[key] = [{k: v for k, v in f.items() if k in known["schema." + cls]} for f in schema.get(key, [])]
    (copy / "schema.json").write_text(json.dumps(schema))
    return copy


def main_load(args: argparse.Namespace, served: dict[tuple[str, str], Path], rows: list[dict]) -> None:
    import torch

    bodies = [json.dumps({"rows": [row]}).encode() for row in rows]
    rounds: dict[tuple[str, str], list[dict]] = {}
    load_before = os.getloadavg()[0]
    servers = [(name, [*LOAD_SERVERS[name], *args.serve_options], args.threads, None) for name in args.load_servers]
    if args.before:  # the server as it was before micro-batching, with a user's defaults
        servers.insert(0, (BEFORE, [], None, args.before.resolve()))
        served = {**served, **{(BEFORE, backend): readable_by(served["multi-task", backend], args.before.resolve())
                               for backend in args.backends}}
    for round in range(args.rounds):  # servers take turns, so a busy spell of the machine hits them alike
        for backend in args.backends:
            for name, options, threads, source in servers:
                server = Server(served[(BEFORE if source else "multi-task"), backend], threads, options, source)
                try:
                    r = load(server, bodies, args.clients, args.load_seconds, args.load_requests)
                finally:
                    server.close()
                rounds.setdefault((backend, name), []).append(r)
                print(f"  round {round + 1}: {backend} {name}: {r['rps']:.0f} requests/s, p99 {r['p99']:.1f} ms", flush=True)
    # Each server's median round (by requests/s); every round's requests/s in the last column.
    results = {key: sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2] for key, runs in rounds.items()}
    print(f"\nload: {args.clients} concurrent clients, 1-row requests, keep-alive, loopback; at most {args.load_seconds:g} s and "
          f"{args.load_requests} requests per server and round (after 1 s of warm-up); {args.rounds} round(s), the median shown")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"(other processes share the cores); {http_stack()}; torch {torch.__version__}; inference threads per server process: "
          f"{args.threads or 'default'} ({BEFORE}: its default); extra serve options: {' '.join(args.serve_options) or '(none)'}")
    print(f"{'server':<22}{'backend':>8}{'requests':>9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'errors':>7}"
          f"{'RSS MB':>7}{'peak MB':>8}{'client CPU':>11}  req/s per round")
    for (backend, name), r in results.items():
        every = " ".join(f"{x['rps']:.0f}" for x in rounds[backend, name])
        print(f"{name:<22}{backend:>8}{r['requests']:>9}{r['rps']:>7.0f}{r['p50']:>8.1f}{r['p99']:>8.1f}{r['max']:>8.0f}"
              f"{r['errors']:>7}{r['rss_before']:>7.0f}{r['rss_peak']:>8.0f}{r['client_cpu']:>10.0%}  {every}")
    for backend in args.backends:
        for baseline in (BEFORE, "unbatched"):
            if (backend, baseline) not in results:
                continue
            base = results[backend, baseline]
            for name, *_ in servers:
                r = results[backend, name]
                if name == BEFORE or name.startswith("unbatched"):
                    continue
                verdict = "meets" if r["rps"] >= 10 * base["rps"] and r["p99"] < 100 else "misses"
                print(f"{backend} {name}: {r['rps'] / base['rps']:.1f}x the requests/s of {baseline}, p99 {r['p99']:.1f} ms "
                      f"({verdict} the target of >= 10x at p99 < 100 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=20_000, help="rows of the synthetic log to train on (1 epoch)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 512])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per set-up, backend and batch size")
    parser.add_argument("--threads", type=int, default=1, help="inference threads per server (PyTorch's or onnxruntime's)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["pytorch"],
                        help="serve each set-up from the run (pytorch) and/or its export (onnx, torchscript)")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS), help="set-ups to time")
    parser.add_argument("--work", type=Path, default=None, help="keep runs and exports here (default: a temporary directory)")
    load_options = parser.add_argument_group("--load: concurrent 1-row clients against the multi-task model")
    load_options.add_argument("--load", action="store_true", help="run the load test instead of the latency table")
    load_options.add_argument("--clients", type=int, default=50, help="concurrent keep-alive connections")
    load_options.add_argument("--load-seconds", type=float, default=10.0, help="at most this long per server")
    load_options.add_argument("--load-requests", type=int, default=20_000, help="at most this many requests per server")
    load_options.add_argument("--load-servers", nargs="+", choices=list(LOAD_SERVERS), default=list(LOAD_SERVERS),
                              help="servers to load, one after another")
    load_options.add_argument("--rounds", type=int, default=1, help="load every server this many times, taking turns (median shown)")
    load_options.add_argument("--before", type=Path, default=None,
                              help="also load the server of another checkout's src directory (e.g. a worktree of the "
                                   "commit before micro-batching), started with `mtlkit serve`'s defaults of that version")
    load_options.add_argument("--serve-options", type=shlex.split, default=[],
                              help="more `mtlkit serve` options for every server, one string: --serve-options='--batch-wait-ms 1'")
    args = parser.parse_args()
    backends = list(dict.fromkeys(args.backends))
    if args.load:
        args.setups = ["multi-task"]

    from mtlkit.data.datasets.shortvideo import shortvideo_table

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"training on {args.train_rows} synthetic short-video rows (1 epoch each) …", flush=True)
        runs = train(work, args.train_rows, {name for setup in args.setups for name in SETUPS[setup]})
        served = export(work, runs, backends)
        rows = shortvideo_table(max(args.batches), seed=123).select(FEATURE_COLUMNS).to_pylist()
        if args.load:
            args.backends = backends
            main_load(args, served, shortvideo_table(1000, seed=123).select(FEATURE_COLUMNS).to_pylist())
            return
        bodies = {b: json.dumps({"rows": rows[:b]}).encode() for b in args.batches}
        results: dict[tuple[str, str, int], list[float]] = {}
        for setup in args.setups:
            for backend in backends:  # back to back per set-up: the backends see the same machine load
                servers = [Server(served[name, backend], args.threads) for name in SETUPS[setup]]
                try:
                    for batch in args.batches:
                        results[setup, backend, batch] = measure(servers, bodies[batch], args.seconds)
                finally:
                    for server in servers:
                        server.close()

    import torch

    versions = f"torch {torch.__version__}"
    if "onnx" in backends:
        import onnxruntime

        versions += f", onnxruntime {onnxruntime.__version__}"
    print(f"\nserving latency per prediction of all {len(TASKS)} tasks (HTTP on loopback, {args.threads} inference thread(s) "
          f"per server, {versions}, {args.seconds:g} s per cell)")
    print(f"{'set-up':<42}{'backend':>12}{'batch':>6}{'p50 ms':>9}{'p99 ms':>9}{'rows/s':>10}{'calls':>7}")
    for batch in args.batches:
        for setup in args.setups:
            for backend in backends:
                lat = np.array(results[setup, backend, batch]) * 1000
                p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
                print(f"{SETUP_TITLES[setup]:<42}{backend:>12}{batch:>6}{p50:>9.2f}{p99:>9.2f}"
                      f"{batch / np.median(lat) * 1000:>10.0f}{len(lat):>7}")
    print()

    def ratios(a: tuple[str, str], b: tuple[str, str]) -> str:
        values = [np.median(results[(*a, n)]) / np.median(results[(*b, n)]) for n in args.batches]
        return ", ".join(f"{r:.2f} (batch {n})" for r, n in zip(values, args.batches))

    first = args.setups[0]
    for backend in backends:
        for setup in args.setups[1:]:
            print(f"{SETUP_TITLES[setup]} [{backend}]: median latency × {ratios((setup, backend), (first, backend))} "
                  f"of {SETUP_TITLES[first].split(' (')[0]} [{backend}]")
    for backend in backends[1:]:
        for setup in args.setups:
            print(f"{SETUP_TITLES[setup]}: {backend} median latency × {ratios((setup, backend), (setup, backends[0]))} "
                  f"of {backends[0]}")


if __name__ == "__main__":
    main()
