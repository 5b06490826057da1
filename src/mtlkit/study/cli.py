"""``mtlkit study run`` and ``mtlkit study affinity`` (registered under ``mtlkit study``; extra: ``mtlkit[study]``)."""

from __future__ import annotations

from pathlib import Path

import typer

study_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Does multi-task learning help on my data, and which tasks belong together? Extra: mtlkit\\[study].")


@study_app.command("run")
def run(
    study: Path = typer.Argument(..., help="Study YAML: base config, arms, seeds, metrics, search spaces."),
    out: Path = typer.Option(..., "--out", "-o", help="Study directory (trials, finals, optuna.db, report.html); the same command resumes."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Tuning / training processes."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Torch threads per process (default: cores / workers)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Live table: trials done / running / pruned, best per arm."),
) -> None:
    """Tune every arm equally (Optuna, validation only), retrain the best on each seed, test once, report."""
    from mtlkit.cli import _fail, console
    from mtlkit.errors import MtlkitError

    try:
        from mtlkit.study.runner import run_study

        results = run_study(study, out, workers=workers, progress=progress, console=console, threads=threads)
    except ImportError as error:
        _fail(RuntimeError(f"{error.name}: `mtlkit study` needs the study extra: pip install 'mtlkit[study]'"))
    except MtlkitError as error:
        _fail(error)
    from rich.table import Table

    from mtlkit.study.results import verdict_rows

    table = Table(title=f"study {results['study']}: each arm vs single-task (and its `versus` arms) (test, {len(results['seeds'])} seeds)")
    for column in ("arm", "versus", "task", "metric", "mean diff", "95% CI", "verdict", "seeds needed"):
        table.add_column(column)
    for r in verdict_rows(results):
        table.add_row(r["arm"], r["versus"], r["task"], r["metric"], f"{r['mean_difference']:+.4g}", f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]",
                      r["verdict"], str(r["seeds_needed"]))
    console.print(table)
    console.print(f"report: {out / 'report.html'}")


@study_app.command("affinity")
def affinity(
    config: Path = typer.Argument(..., help="A tabular run config, or a study file (its base and `affinity:` settings)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for affinity.json (a study's: STUDY_DIR/affinity, picked up by its report)."),
    groups: int | None = typer.Option(None, "--groups", "-k", min=1, help="Budget: at most this many models (default 2)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs of the short joint run (default 2)."),
) -> None:
    """Inter-task affinity (Fifty et al. 2021), gradient cosines, label correlations and the best grouping into k models."""
    from mtlkit.cli import _fail, console
    from mtlkit.errors import MtlkitError

    try:
        from mtlkit.config import read_config_file
        from mtlkit.study.affinity import run_affinity
        from mtlkit.study.spec import AffinitySpec

        raw = read_config_file(config)
        if "arms" in raw:
            from mtlkit.study.arms import load_study, validate_config

            study = load_study(config)
            spec = study.spec.affinity or AffinitySpec()
            run_config = validate_config(study.base, f"{config}: base")
        else:
            from mtlkit.config import load_config

            spec, run_config = AffinitySpec(), load_config(config)
        spec = spec.model_copy(update={k: v for k, v in {"groups": groups, "epochs": epochs}.items() if v is not None})
        result = run_affinity(run_config, spec, out)
    except MtlkitError as error:
        _fail(error)
    from rich.table import Table

    names = result["tasks"]
    table = Table(title="inter-task affinity Z[i→j]: row i's look-ahead step, column j's loss (higher: i helps j)")
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right")
    for n, row in zip(names, result["affinity"]):
        table.add_row(n, *(f"{v:+.4f}" for v in row))
    console.print(table)
    console.print(f"grouping into at most {spec.groups} models: " + " | ".join(", ".join(g) for g in result["grouping"]["groups"]))
    console.print(f"written: {out / 'affinity.json'}")
