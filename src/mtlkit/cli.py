"""The ``mtlkit`` command line: train, evaluate, predict, demo, doctor.

Errors caused by input (config, data, paths) print one line naming the key, column, row or
file, and exit with code 2, without a traceback. ``doctor`` (and ``train --doctor``) exits with
code 1 when the data has hard errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from mtlkit.errors import MtlkitError
from mtlkit.serve.options import ServeOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multi-task learning for ranking and NLP.")
console = Console()
errors = Console(stderr=True)


def _fail(error: Exception) -> None:
    from rich.markup import escape

    errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run configuration."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<config name>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Show progress (a bar on a terminal, a line every "
                                            "train.log_every_seconds elsewhere); default: the config's train.progress (true)."),
    doctor: bool = typer.Option(False, "--doctor", help="Check the data first (see `mtlkit doctor`); exit 1 before training on hard errors."),
    time_column: str | None = typer.Option(None, "--time-column", help="Implies --doctor: also check time overlap between splits on this column."),
) -> None:
    """Train a multi-task model (tabular, or NLP when CONFIG has `encoder:`); an unfinished run in OUT is resumed."""
    from mtlkit.config import load_any_config
    from mtlkit.pipeline import kind_of_config
    from mtlkit.report import metrics_table, print_table

    try:
        run_config = load_any_config(config)
        kind = kind_of_config(run_config)
        run_dir = out or Path("runs") / config.stem
        prepared = None
        if doctor or time_column:
            from mtlkit.doctor import print_report

            prepared, report = kind.check_data(run_config, time_column)
            print_report(report, console, brief=True)
            if report.exit_code():  # before training: no run directory is created
                errors.print("[bold red]error:[/] the data doctor found hard errors; nothing was trained")
                raise typer.Exit(code=1)
        summary = kind.train(run_config, run_dir, overwrite=overwrite, progress=progress, prepared=prepared)
    except MtlkitError as error:
        _fail(error)
    from mtlkit.train.distributed import context

    if not context().is_main:  # under torchrun only rank 0 reports
        return
    splits = {"validation": summary["validation"], **({"test": summary["test"]} if summary["test"] else {})}
    print_table(metrics_table(f"{summary['backbone']} — best epoch {summary['best_epoch']}", splits), console)
    console.print(f"run directory: {run_dir}")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `mtlkit train`."),
    data: Path | None = typer.Option(None, help="Evaluate on this labelled file instead of the run's splits."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
) -> None:
    """Evaluate the best checkpoint of a run."""
    from dataclasses import asdict

    from mtlkit.outputs import check_output_file, write_text
    from mtlkit.pipeline import kind_of_run
    from mtlkit.report import gate_table, metrics_table, print_table

    try:
        if json_out is not None:  # before any work: not after the metrics are printed
            check_output_file(json_out, "--json", [data] if data else [])
        evaluation = kind_of_run(run_dir).evaluate(run_dir, data)
    except MtlkitError as error:
        _fail(error)
    print_table(metrics_table(str(run_dir), evaluation.metrics), console)
    if evaluation.gates:
        print_table(gate_table(evaluation.gates), console)
    if evaluation.fusion:
        print_table(metrics_table("fused ranking score (fused/…) next to each task's own prediction (own/…)", evaluation.fusion), console)
    if evaluation.scenarios:
        per_scenario = {f"{split} / {name}": tasks for split, by in evaluation.scenarios.items() for name, tasks in by.items()}
        print_table(metrics_table("per scenario (model.scenario)", per_scenario), console)
    if json_out:
        gates = {name: asdict(s) for name, s in (evaluation.gates or {}).items()}
        extra = {**({"gates": gates} if gates else {}), **({"fusion": evaluation.fusion} if evaluation.fusion else {}),
                 **({"scenarios": evaluation.scenarios} if evaluation.scenarios else {})}
        try:
            write_text(json_out, json.dumps({**evaluation.metrics, **extra}, indent=1), "--json")
        except MtlkitError as error:
            _fail(error)


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run directory written by `mtlkit train`."),
    data: Path = typer.Argument(..., help="Tabular run: CSV or Parquet with the feature columns. NLP run: a file in the task's format."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output file: tabular .csv, .tsv, .parquet, .jsonl or .json (default predictions.csv); "
                                       "NLP .jsonl, or .csv for classification/regression (default predictions.jsonl)."),
    keep: list[str] = typer.Option([], "--keep", help="Tabular runs: input columns to copy to the output (e.g. an id)."),
    task: str | None = typer.Option(None, "--task", help="NLP runs: the task to predict (required when the run has several)."),
    format: str | None = typer.Option(None, "--format", help="NLP runs: the reader format of DATA (default: the task's, from the run's config)."),
) -> None:
    """Write predictions: one column per task (tabular run), or one JSON record per example of one task (NLP run)."""
    from mtlkit.pipeline import kind_of_run

    try:
        kind = kind_of_run(run_dir)
        out = out or Path(kind.default_predictions)
        rows = kind.predict(run_dir, data, out, keep=keep, task=task, format=format)
    except MtlkitError as error:
        _fail(error)
    console.print(f"wrote {rows} rows to {out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("mtlkit-demo"), "--out", "-o", help="Where the table (CSV) and plot (PNG) go."),
    seeds: int = typer.Option(1, min=1, help="Seeds per model and correlation."),
    quick: bool = typer.Option(False, help="A smaller, faster run (for smoke tests)."),
) -> None:
    """Synthetic MMoE-paper data at correlations 0.5, 0.9, 1.0: every backbone vs single-task."""
    from mtlkit.demo import run_demo

    try:
        run_demo(out, seeds=seeds, quick=quick, console=console)
    except MtlkitError as error:
        _fail(error)


@app.command()
def doctor(
    config: Path = typer.Argument(..., help="YAML run configuration (the data it names is checked)."),
    out: Path = typer.Option(Path("doctor.json"), "--out", "-o", help="Where the JSON report goes."),
    time_column: str | None = typer.Option(None, "--time-column", help="Check that every training row precedes validation and test on this column."),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as hard errors too (exit 1)."),
) -> None:
    """Check the data before training; exit 1 on hard errors, 0 otherwise.

    Errors: invalid labels, non-numeric or NaN/inf/negative weights, a task with no labelled
    row or a single class in train, leakage (one feature alone has AUC >= 0.99 or <= 0.01, or
    |Spearman| >= 0.99), time overlap between train and validation/test. Warnings: rare or
    one-class labels outside train, identical labels of two tasks, labels outside a task's
    mask (conversion without click), NaN/inf in features, over 20% unseen categories, over 1%
    duplicated rows or copies of training rows.
    """
    from mtlkit.config import load_config
    from mtlkit.doctor import diagnose_config, print_report
    from mtlkit.outputs import check_output_file

    try:
        check_output_file(out, "--out", [config])  # before reading any data
        _, report = diagnose_config(load_config(config), time_column)
        report.write_json(out, config=str(config), time_column=time_column)
    except MtlkitError as error:
        _fail(error)
    print_report(report, console)
    console.print(f"report: {out}")
    raise typer.Exit(code=report.exit_code(strict))


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `mtlkit train`."),
    format: str = typer.Option(..., "--format", "-f", help="torchscript or onnx (NLP runs: onnx)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default: RUN_DIR/export/<format>)."),
    verify: bool = typer.Option(True, help="Load the export back and compare it with PyTorch (ONNX: needs onnxruntime)."),
) -> None:
    """Export the best model on encoded tensors, with schema.json and manifest.json (see mtlkit.export).

    Outputs are served values (calibrated probabilities, values in label units, class
    probabilities) and the fused score; the batch axis is dynamic. Extra: mtlkit\\[export].
    """
    from mtlkit.export import export_run

    try:
        result = export_run(run_dir, format, out, verify=verify)
    except MtlkitError as error:
        _fail(error)
    manifest = result.manifest
    if manifest.get("run_kind") == "nlp":
        console.print(f"wrote {result.artifact} (+ tokenizer/, manifest.json)", soft_wrap=True)
        console.print("inputs:  " + ", ".join(f"{s['name']} {s['dtype']}{s['axes']}" for s in manifest["inputs"]), highlight=False, soft_wrap=True)
        console.print("outputs: " + ", ".join(f"{s['name']} ({s['kind']})" for s in manifest["outputs"]), highlight=False, soft_wrap=True)
        check = manifest["verification"]
        if check["checked"]:
            kinds = ", ".join(f"{k} {v:.2g}" for k, v in check["max_abs_diff_by_kind"].items())
            console.print(f"verified against PyTorch on each task's data: max |diff| by kind: {kinds} "
                          f"(allowed {check['atol']:g} + {check['rtol']:g}·|value|)", soft_wrap=True)
        return
    console.print(f"wrote {result.artifact} (+ schema.json, manifest.json)", soft_wrap=True)
    console.print("inputs:  " + ", ".join(f"{s['name']} {s['dtype']}{s['shape']}" for s in manifest["inputs"]), highlight=False, soft_wrap=True)
    console.print("outputs: " + ", ".join(f"{s['name']} ({s['postprocess']})" if s["name"] != "fused_score" else "fused_score"
                                          for s in manifest["outputs"]), highlight=False, soft_wrap=True)
    check = manifest["verification"]
    if check["checked"]:
        console.print(f"verified against PyTorch on {check['rows']} rows: max |diff| {check['max_abs_diff']:.2g} "
                      f"(allowed {check['atol']:g} + {check['rtol']:g}·|value|)", soft_wrap=True)


_SERVE = ServeOptions()  # `mtlkit serve`'s defaults


@app.command()
def serve(
    directory: Path = typer.Argument(..., help="A run directory written by `mtlkit train`, or an export directory "
                                     "written by `mtlkit export` (has manifest.json: served with onnxruntime / torch.jit)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port."),
    max_batch: int = typer.Option(_SERVE.max_batch, "--max-batch", min=1, help="Most rows in one /predict request (more: HTTP 413)."),
    max_body_bytes: int = typer.Option(_SERVE.max_body_bytes, "--max-body-bytes", min=1,
                                       help="Most bytes in one request body, counted as they arrive (more: HTTP 413)."),
    batching: bool = typer.Option(_SERVE.batching, help="Merge concurrent requests into one forward pass (micro-batching)."),
    batch_rows: int = typer.Option(_SERVE.batch_rows, "--batch-rows", min=1, help="Most rows in one merged forward pass."),
    batch_wait_ms: float = typer.Option(_SERVE.batch_wait_ms, "--batch-wait-ms", min=0, max=1000,
                                        help="How long the first request of a batch waits for others to join (ms)."),
    queue_size: int = typer.Option(_SERVE.queue_size, "--queue-size", min=1, help="Requests waiting for the model; more get HTTP 503 with Retry-After."),
    workers: int = typer.Option(1, min=1, help="Server processes, each with its own copy of the model (see README: Serving)."),
    threads: int = typer.Option(_SERVE.threads, min=1, help="Inference threads per process, PyTorch's or onnxruntime's "
                                "(more contend with the HTTP event loop for small requests; --workers uses more cores)."),
    show_paths: bool = typer.Option(False, "--show-paths", help="/health shows the absolute paths of the run and export."),
    access_log: bool = typer.Option(False, "--access-log", help="Log a line per request (off: it costs ~10% at thousands of requests/s)."),
) -> None:
    """Serve a run's best model, or its export, over HTTP: POST /predict, GET /health, GET /schema. Extra: mtlkit\\[serve]."""
    from mtlkit.serve import serve as run_server

    try:
        run_server(directory, host=host, port=port, workers=workers, access_log=access_log, max_batch=max_batch, max_body_bytes=max_body_bytes,
                   batching=batching, batch_rows=batch_rows, batch_wait_ms=batch_wait_ms, queue_size=queue_size,
                   threads=threads, show_paths=show_paths)
    except MtlkitError as error:
        _fail(error)


from mtlkit.study.cli import study_app  # noqa: E402  (typer only: the work imports Optuna)

app.add_typer(study_app, name="study")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        errors.print("interrupted; an unfinished run resumes with the same `mtlkit train` command")
        sys.exit(130)


if __name__ == "__main__":
    main()
