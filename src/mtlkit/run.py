"""End-to-end runs: data → schema → model → training → run directory, and back.

A run directory holds ``config.yaml`` (resolved: tasks and features filled in; written first, so
the directory is an mtlkit run from its first byte), ``schema.json``, ``best.pt`` / ``last.pt``,
``metrics.jsonl`` / ``metrics.csv``, ``test_metrics.json`` and ``summary.json``. ``summary.json``
is written last: a directory without it is an unfinished run, which ``train`` resumes from
``last.pt``, or restarts when it was killed before the first one (:mod:`mtlkit.rundir`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from mtlkit.balancing import build_balancer
from mtlkit.config import NO_SOURCE, RunConfig, SplitSpec, dump_config, load_config, resolve_paths
from mtlkit.data.batch import BatchSource, EncodedTable
from mtlkit.data.datasets import load_dataset
from mtlkit.data.readers import read_table
from mtlkit.data.sampling import downsample_negatives
from mtlkit.data.schema import FittedSchema, SchemaSpec
from mtlkit.data.split import seeded_split
from mtlkit.data.streaming import StreamedTrain
from mtlkit.data.tables import TableLike, as_arrow, is_dataframe, is_table_like, output_like
from mtlkit.data.writers import output_format, write_table
from mtlkit.diagnostics.gates import GateDiagnostics, GateStats, gate_statistics, has_gates
from mtlkit.diagnostics.gradients import gradient_diagnostics
from mtlkit.errors import ConfigError, DataError
from mtlkit.models import build_model
from mtlkit.optim import table_field_names
from mtlkit.outputs import check_output_dir, check_output_file, write_text
from mtlkit.protocols import TrainableModel
from mtlkit.rundir import WRITTEN, open_run_dir, removed_on_error
from mtlkit.sizing import out_of_memory
from mtlkit.tasks import Task, TaskKind
from mtlkit.train import Callback, Trainer, distributed, evaluate, predict_logits
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.device import resolve_device
from mtlkit.train.fusion_report import fusion_report
from mtlkit.train.selection import check_monitor

SUMMARY = "summary.json"
SPLITS = ("train", "validation", "test")


@dataclass
class PreparedData:
    """Raw splits plus the resolved tasks and feature spec; ``names`` say where each came from."""

    train: pa.Table
    validation: pa.Table
    test: pa.Table | None
    tasks: list[Task]
    features: SchemaSpec
    names: dict[str, str]
    stream: StreamedTrain | None = None  # data.streaming: `train` holds no rows, only the columns


def prepare_data(config: RunConfig, tables: Mapping[str, TableLike] | None = None) -> PreparedData:
    """Read every split named by the config, or take ``tables`` (in-memory ``train`` and optional
    ``validation`` / ``test``: pyarrow Tables or pandas DataFrames) in place of files; raises
    DataError naming the file (or table) on any problem. ``data.derived_targets`` are then appended
    to every split, computed from the training split only (:mod:`mtlkit.data.derived_targets`), and
    ``data.negative_sampling`` down-samples the training split and marks the tasks on its label for
    calibration (after the targets: they count the whole training split)."""
    prepared = _with_derived_targets(config, _read_splits(config, tables))
    spec = config.data.negative_sampling
    if spec is None:
        return prepared
    tasks = []
    for task in prepared.tasks:
        if task.label == spec.label and task.kind is TaskKind.BINARY:
            if task.negative_sampling_rate not in (None, spec.rate):
                raise ConfigError(f"tasks.{task.name}.negative_sampling_rate ({task.negative_sampling_rate}) contradicts "
                                  f"data.negative_sampling.rate ({spec.rate}): leave it out, data.negative_sampling sets it")
            task = task.model_copy(update={"negative_sampling_rate": spec.rate})
        tasks.append(task)
    if not any(t.label == spec.label for t in tasks):
        raise ConfigError(f"data.negative_sampling.label: no task has label {spec.label!r}; labels are: "
                          f"{', '.join(sorted({str(t.label) for t in tasks}))}")
    train = downsample_negatives(prepared.train, spec.label, spec.rate, spec.seed, prepared.names["train"])
    return replace(prepared, train=train, tasks=tasks)


def _with_derived_targets(config: RunConfig, prepared: PreparedData) -> PreparedData:
    if not config.data.derived_targets:
        return prepared
    from mtlkit.data.derived_targets import add_derived_targets

    splits = {"train": prepared.train, "validation": prepared.validation, "test": prepared.test}
    done = add_derived_targets(splits, config.data.derived_targets, prepared.names)
    prepared.train, prepared.validation, prepared.test = done["train"], done["validation"], done["test"]
    return prepared


def _read_splits(config: RunConfig, tables: Mapping[str, TableLike] | None = None) -> PreparedData:
    data = config.data
    if tables is not None and (data.train or data.validation or data.test or data.dataset):
        raise ConfigError("data: in-memory tables replace the config's files and datasets: leave data.train, "
                          "validation, test and dataset out (data.split applies)")
    if data.dataset is not None:  # a built-in dataset: its options validated by its own model
        loaded = load_dataset(data.dataset, data.dataset_options)
        names = {s: f"{data.dataset}/{s}" for s in SPLITS}
        return PreparedData(loaded.train, loaded.validation, loaded.test, config.tasks or loaded.tasks,
                            config.features or loaded.schema, names)
    assert config.features is not None and config.tasks is not None
    stream = None
    if tables is not None:
        given = _in_memory(tables)
        train, validation, test = given["train"], given.get("validation"), given.get("test")
        names = {split: f"tables[{split!r}]" for split in given}
    elif data.tables:
        raise ConfigError(f"data.tables: the run was trained on in-memory tables ({', '.join(data.tables)}): pass them again "
                          "(train_run(config, run_dir, tables=...)) or evaluate on a file or table (mtlkit evaluate RUN --data FILE)")
    elif data.train is None:
        raise ConfigError(f"data: {NO_SOURCE}, or pass in-memory tables: train_run(config, run_dir, tables={{'train': ...}})")
    else:
        stream = StreamedTrain.open(data.train, data.streaming) if data.streaming else None
        train = stream.empty_table() if stream else read_table(data.train)
        validation = read_table(data.validation) if data.validation else None
        test = read_table(data.test) if data.test else None
        names = {split: str(path) for split, path in (("train", data.train), ("validation", data.validation), ("test", data.test)) if path}
    if validation is None or (test is None and data.split is not None and data.split.test > 0):
        split = data.split or SplitSpec()
        fractions = {"validation": split.validation} if validation is None else {}
        if test is None and split.test > 0:
            fractions["test"] = split.test
        parts = seeded_split(train, fractions, seed=split.seed)
        train, validation, test = parts["train"], parts.get("validation", validation), parts.get("test", test)
        names.update({k: f"{names['train']} ({k} split)" for k in fractions})
    return PreparedData(train, validation, test, list(config.tasks), config.features, names, stream)


def _in_memory(tables: Mapping[str, TableLike]) -> dict[str, pa.Table]:
    """The in-memory splits as Arrow tables (a DataFrame without a copy where Arrow's layout allows)."""
    unknown = sorted(set(tables) - set(SPLITS))
    if unknown:
        raise ConfigError(f"tables: unknown split {unknown[0]!r} (give train, and optionally validation and test)")
    if "train" not in tables:
        raise ConfigError("tables: a 'train' table is required (validation and test are optional: data.split holds them out)")
    converted = {split: as_arrow(tables[split], f"tables[{split!r}]") for split in SPLITS if split in tables}
    empty = next((split for split, table in converted.items() if table.num_rows == 0), None)
    if empty is not None:
        raise DataError(f"tables[{empty!r}]: has no rows")
    return converted


def check_columns(prepared: PreparedData) -> None:
    """Every column a task needs must exist in every split: fail before any work starts."""
    needed = [*prepared.features.columns(), *(column for task in prepared.tasks for column in task.columns().values())]
    for split, table in (("train", prepared.train), ("validation", prepared.validation), ("test", prepared.test)):
        if table is None:
            continue
        for column in needed:
            if column not in table.column_names:
                raise DataError(f"{prepared.names[split]}: missing column {column!r}")


@dataclass
class EncodedData:
    schema: FittedSchema
    train: EncodedTable
    validation: EncodedTable
    test: EncodedTable | None


def encode_data(prepared: PreparedData) -> EncodedData:
    check_columns(prepared)
    stream = prepared.stream
    schema = stream.fit(prepared.features) if stream else prepared.features.fit(prepared.train, prepared.names["train"])
    def encode(split: str, table: pa.Table) -> EncodedTable:
        return schema.encode(table, prepared.tasks, prepared.names[split])

    test = encode("test", prepared.test) if prepared.test is not None else None
    return EncodedData(schema, encode("train", prepared.train), encode("validation", prepared.validation), test)


def check_trainable(prepared: PreparedData) -> None:
    """Refuse data the doctor calls a hard error for training (labels, weights; mtlkit.doctor.training_blockers)."""
    from mtlkit.doctor import training_blockers

    tables = {"train": None if prepared.stream else prepared.train, "validation": prepared.validation, "test": prepared.test}
    blockers = training_blockers(tables, prepared.tasks, prepared.names)
    if blockers:
        more = f" (and {len(blockers) - 1} more: see `mtlkit doctor`)" if len(blockers) > 1 else ""
        raise DataError(blockers[0].message + more)


def _check_memory(config: RunConfig, encoded: EncodedData, tasks: list[Task], device: torch.device) -> None:
    """Refuse a model that cannot fit, naming the key, before anything is allocated (mtlkit.sizing)."""
    from mtlkit.sizing import check_training_memory, tabular_candidates, with_overrides

    def build(overrides):
        return build_model(*with_overrides(config.model, encoded.schema, overrides), tasks)

    spec = config.train
    candidates = tabular_candidates(config.model, encoded.schema, spec.batch_size, spec.eval_batch_size)
    check_training_memory(build, encoded.validation.take(slice(0, 64)), spec.batch_size, spec.eval_batch_size, candidates, device)


def run_summary(result, model: nn.Module, test: dict | None, **describe) -> dict:
    """``summary.json``: what the run was (``describe``), then what training and testing gave."""
    return {
        **describe,
        "parameters": count_parameters(model),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "validation": result.best_results,
        "test": test,
        "precision": result.precision,  # train.precision as resolved ("auto": bf16 where native, else fp32)
        "train_seconds": result.seconds,
        "train_samples_per_second": result.train_samples / result.train_seconds if result.train_seconds > 0 else None,
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_run(
    config: RunConfig,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
    encoded: EncodedData | None = None,
    prepared: PreparedData | None = None,
    tables: Mapping[str, TableLike] | None = None,
) -> dict:
    """Train as the config says; return the summary (also written to ``run_dir/summary.json``).

    Relative data paths of a config built in Python are relative to the working directory (those of
    a loaded file, to its folder: :func:`~mtlkit.config.load_config`); ``config.yaml`` stores them
    absolute, so the run evaluates and predicts from any directory.

    ``tables`` trains on in-memory data instead of files: ``{"train": ..., "validation": ...,
    "test": ...}`` (validation and test optional, held out by ``data.split`` when missing), each a
    pyarrow Table or a pandas DataFrame (its index is ignored). The config then names no data
    files; its ``config.yaml`` records ``data.tables``.

    Everything that can be checked is checked before the run directory is touched (paths, data,
    labels, device, memory); the directory is then an mtlkit run from its first byte
    (:mod:`mtlkit.rundir`), and removed again if setting up the run still fails on bad input.
    """
    config = resolve_paths(config, Path.cwd())  # a no-op for a loaded config: already absolute
    path = check_output_dir(run_dir) if run_dir is not None else None  # before reading any data
    prepared = prepared or prepare_data(config, tables)
    encoded = encoded or encode_data(prepared)
    check_trainable(prepared)
    resolved = config.model_copy(update={"tasks": prepared.tasks, "features": prepared.features})
    if tables is not None:  # what config.yaml can say of data it does not hold
        resolved = resolved.model_copy(update={"data": resolved.data.model_copy(update={"tables": [s for s in SPLITS if s in tables]})})
    if progress is not None:
        resolved = resolved.model_copy(update={"train": resolved.train.model_copy(update={"progress": progress})})
    check_monitor(resolved.train.monitor, prepared.tasks)  # before anything is written
    _check_memory(config, encoded, prepared.tasks, resolve_device(config.train.device))
    initial = None
    if config.init_from is not None:  # read (and refused if missing) before anything is written
        from mtlkit.train.warm_start import checkpoint_state

        initial = checkpoint_state(config.init_from)
    ctx = distributed.setup()  # under torchrun: data-parallel (mtlkit.train.distributed); only rank 0 writes
    torch.manual_seed(config.seed)
    with out_of_memory("building the model"):
        model = build_model(config.model, encoded.schema, prepared.tasks)
    warm = None
    if initial is not None:
        from mtlkit.train.warm_start import warm_start

        warm = warm_start(model, initial)  # a ConfigError before anything is written when nothing matches
    trained = set(model.loss_task_names)
    balancer = build_balancer(config.balancer, [*(t for t in prepared.tasks if t.name in trained), *model.auxiliary_tasks()])
    callbacks = [*callbacks, *([GateDiagnostics(model)] if has_gates(model) else []),
                 *gradient_diagnostics(resolved.train, model.loss_task_names, path if ctx.is_main else None)]
    batches: BatchSource
    if prepared.stream is not None:  # checks every file's columns before anything is written
        batches = prepared.stream.batches(encoded.schema, prepared.tasks, config.train.batch_size, config.seed)
    else:
        batches = encoded.train.batches(config.train.batch_size, shuffle=True, seed=config.seed)
    run = open_run_dir(path, dump_config(resolved), overwrite) if path is not None and ctx.is_main else None
    resume = run.resume if run is not None else False
    if ctx.enabled:  # rank 0 decided (and cleared the directory) before any rank looks for last.pt
        decision = [resume]
        torch.distributed.broadcast_object_list(decision, src=0)
        resume = bool(decision[0])
    with removed_on_error(run):
        trainer = Trainer(model, prepared.tasks, balancer, resolved.train, path, callbacks,
                          config.model.embedding_optimizer, table_field_names(encoded.schema))
        if run is not None and path is not None and not resume:  # (a run directory has a path)
            encoded.schema.save(path / "schema.json")
        with out_of_memory("training"):
            result = trainer.fit(batches, encoded.validation, resume=resume)
    test = evaluate(model, prepared.tasks, encoded.test, config.train.eval_batch_size, trainer.device) if encoded.test is not None else None
    warmed = {"init_from": {"path": str(config.init_from), "loaded": warm.loaded, "fresh": warm.fresh}} if warm else {}
    summary = run_summary(result, model, test, backbone=config.model.backbone, balancer=config.balancer.name,
                          tasks=[t.name for t in prepared.tasks], processes=ctx.world, **warmed)
    if path is not None and ctx.is_main:
        if test is not None:
            write_text(path / "test_metrics.json", json.dumps(test, indent=1))
        write_text(path / SUMMARY, json.dumps(summary, indent=1))
    return summary


@dataclass
class LoadedRun:
    config: RunConfig
    schema: FittedSchema
    tasks: list[Task]
    model: TrainableModel


DAMAGED_RUN_HINT = "the run directory is damaged: train it again (mtlkit train CONFIG --out RUN_DIR --overwrite)"


def load_weights(model: nn.Module, state: dict, path: Path) -> None:
    """``model.load_state_dict(state)``; a checkpoint of another model is a ConfigError naming ``path``."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: does not fit the model of config.yaml ({detail[:160]}); {DAMAGED_RUN_HINT}") from None


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild the model of a finished (or interrupted) run with its best weights."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "schema.json", "best.pt"):
        if not (run_dir / name).exists():
            raise ConfigError(f"{run_dir}: not a trained mtlkit run (no {name})")
    config = load_config(run_dir / "config.yaml")  # data paths in it are absolute
    schema = FittedSchema.load(run_dir / "schema.json", DAMAGED_RUN_HINT)
    tasks = list(config.tasks or [])
    model = build_model(config.model, schema, tasks)
    load_weights(model, load_checkpoint(run_dir / "best.pt", "cpu", DAMAGED_RUN_HINT)["model"], run_dir / "best.pt")
    model.eval()
    return LoadedRun(config, schema, tasks, model)


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, dict[str, float]]]  # split -> task -> metric
    gates: dict[str, GateStats] | None  # on the first split, for gated backbones
    fusion: dict[str, dict[str, dict[str, float]]] | None = None  # split -> task -> own/fused metric
    scenarios: dict[str, dict[str, dict[str, dict[str, float]]]] | None = None  # split -> scenario -> task -> metric


def evaluate_run(run_dir: str | Path, data: str | Path | TableLike | None = None) -> Evaluation:
    """Metrics of the best model on the run's validation and test splits (or on ``data``: a labelled
    file, pyarrow Table or pandas DataFrame), and gate statistics."""
    run = load_run(run_dir)
    batch = run.config.train.eval_batch_size
    if data is not None and is_table_like(data):
        tables = {"data": run.schema.encode(data, run.tasks, "data")}  # a DataFrame converts there
    elif data is not None:
        tables = {str(data): run.schema.encode(read_table(data), run.tasks, str(data))}
    else:
        prepared = prepare_data(run.config)
        tables = {"validation": run.schema.encode(prepared.validation, run.tasks, prepared.names["validation"])}
        if prepared.test is not None:
            tables["test"] = run.schema.encode(prepared.test, run.tasks, prepared.names["test"])
    metrics = {split: evaluate(run.model, run.tasks, table, batch) for split, table in tables.items()}
    gates = gate_statistics(run.model, next(iter(tables.values())), batch) if has_gates(run.model) else None
    fusion = None
    if run.model.fusion is not None:
        fusion = {split: fusion_report(run.model, run.tasks, table, batch) for split, table in tables.items()}
    scenarios = None
    if run.config.model.scenario is not None:  # model.scenario: metrics per scenario value (mtlkit.scenarios)
        from mtlkit.scenarios import scenario_metrics

        field = [f.name for f in run.schema.categorical].index(run.config.model.scenario)
        feature = run.schema.categorical[field]
        scenarios = {split: scenario_metrics(run.model, run.tasks, table, feature, field, batch) for split, table in tables.items()}
    return Evaluation(metrics, gates, fusion, scenarios)


def predict_table(run: LoadedRun, table: TableLike, source: str = "data") -> dict[str, np.ndarray]:
    """One output column per task: probability or odds (binary), value (regression), class (multiclass).

    Everything comes from :meth:`Task.predict`, so negative-sampling calibration, the odds read-out
    of weighted logistic regression and ``label_transform`` inverses apply at serving too.
    ``table``: a pyarrow Table or a pandas DataFrame.
    """
    encoded = run.schema.encode(as_arrow(table, source), run.tasks, source, with_targets=False)
    logits = predict_logits(run.model, encoded, run.config.train.eval_batch_size)
    columns: dict[str, np.ndarray] = {}
    for task in run.tasks:
        prediction = task.predict(logits[task.name]).numpy()
        if task.kind is TaskKind.MULTICLASS:
            columns[task.name] = prediction.argmax(axis=1)
            for c in range(prediction.shape[1]):
                columns[f"{task.name}_p{c}"] = prediction[:, c]
        else:
            columns[task.name] = prediction
    if run.model.fusion is not None:  # the serving score of model.fusion
        columns["fused_score"] = run.model.fused_score(logits).numpy()
    return columns


def predict(run: LoadedRun | str | Path, data: TableLike | str | Path, keep: Sequence[str] = ()) -> Any:
    """Predictions of a run (a run directory or :func:`load_run`'s result) for ``data``, as
    :func:`predict_table` computes them, after the ``keep`` columns copied from the input.

    ``data``: a pyarrow Table, a pandas DataFrame or a CSV/Parquet file. The result is a pandas
    DataFrame on the input's index when a DataFrame came in, a pyarrow Table otherwise.

    Example (``new`` a DataFrame with the feature columns and an ``id``)::

        scores = predict("runs/first", new, keep=["id"])   # DataFrame: id, click, buy, ...
    """
    run = run if isinstance(run, LoadedRun) else load_run(run)
    source = str(data) if isinstance(data, (str, Path)) else "data"
    table = read_table(data) if isinstance(data, (str, Path)) else as_arrow(data, source)
    missing = [c for c in keep if c not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r} (asked to keep it)")
    kept = {c: data[c] for c in keep} if is_dataframe(data) else {c: table.column(c) for c in keep}  # a DataFrame's own Series
    return output_like(data, {**kept, **predict_table(run, table, source)})


def predict_run(run_dir: str | Path, data: str | Path, out: str | Path, keep: Sequence[str] = ()) -> int:
    """Write one prediction column per task (and the ``keep`` columns) for the rows of ``data`` to ``out``.

    The format follows ``out``'s suffix (:mod:`mtlkit.data.writers`); ``out`` is checked before any
    work (not a directory, not the input, writable) and written atomically.
    """
    check_output_file(out, "--out", [data], run_dir, sorted(WRITTEN))
    output_format(out)
    result = predict(load_run(run_dir), data, keep)  # a file in: a pyarrow Table out
    write_table(result, out)
    return result.num_rows
