"""NLP runs end to end: task data → tokenizer → encoder + heads → core Trainer → run directory.

``mtlkit train CONFIG`` comes here when the config has a top-level ``encoder:``
(:mod:`mtlkit.nlp.config`). The run directory holds what a tabular run's does: ``config.yaml``
(resolved: label lists, candidate counts, metrics and absolute paths filled in), ``best.pt`` /
``last.pt``, ``metrics.jsonl`` / ``metrics.csv``, ``test_metrics.json`` and ``summary.json``,
written last; a directory without it is resumed from ``last.pt``, exactly (the samplers and the
masked-LM masks are functions of ``(seed, epoch, step)``).

Under ``torchrun`` the run is data-parallel as a tabular one is (:mod:`mtlkit.train.distributed`):
every rank draws the same global batches from the task sampler (a function of seed, epoch and
step) and keeps rows ``rank::world`` of each; gradients are averaged over ranks; every rank scores
the whole validation split; only rank 0 writes. Dropout masks differ from a 1-process run's.

Splits per task: the files given; a missing validation (test) split is a seeded ``split``
fraction of train (default 10 % validation); then ``max_rows`` keeps a seeded subsample of a
split. Tasks with ``from_tasks`` take the texts of those tasks, split by split, each labelled
with its source task as ``domain``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtlkit.balancing import build_balancer
from mtlkit.data.batch import EncodedTable
from mtlkit.diagnostics.gradients import gradient_diagnostics
from mtlkit.errors import ConfigError, DataError
from mtlkit.nlp.base import NLPTask
from mtlkit.nlp.config import SPLITS, HoldoutSpec, NLPRunConfig, dump_nlp_config, parse_nlp_config
from mtlkit.nlp.examples import TextExample, texts_of
from mtlkit.nlp.sampling import TaskSampler, seed_key
from mtlkit.run import DAMAGED_RUN_HINT, load_weights

SUMMARY = "summary.json"
CALIBRATION = "calibration.json"  # {task: {option: value}} chosen on validation after training (span QA's null_threshold)


def _subsample(examples: list, rows: int, seed: int) -> list:
    if rows >= len(examples):
        return examples
    keep = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:rows]
    return [examples[i] for i in sorted(keep.tolist())]  # file order kept


def _holdout(train: list, fractions: dict[str, float], seed: int, task: str, group: str | None = None) -> dict[str, list]:
    """Seeded fractions of ``train`` (of its groups, when ``group`` names an example attribute)."""
    if group is not None and train and not hasattr(train[0], group):
        raise ConfigError(f"task {task!r}: data.split.group: its examples have no attribute {group!r}")
    keys = [getattr(x, group) if group else i for i, x in enumerate(train)]
    units = list(dict.fromkeys(keys))  # groups in first-seen order
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
    assigned, start = {}, 0
    for split, fraction in fractions.items():
        n = max(1, round(fraction * len(units)))
        assigned.update({units[i]: split for i in order[start : start + n]})
        start += n
    if start >= len(units):
        raise DataError(f"task {task!r}: {len(units)} training {'groups' if group else 'rows'} are too few to hold out {', '.join(fractions)}")
    parts: dict[str, list] = {split: [] for split in ("train", *fractions)}
    for key, example in zip(keys, train):
        parts[assigned.get(key, "train")].append(example)
    return parts


def _texts(example: Any, task: str, source: str) -> tuple[str, str | None]:
    try:
        return texts_of(example)
    except TypeError as error:
        raise ConfigError(f"task {task!r}: cannot take texts from task {source!r} ({error})") from None


def load_examples(config: NLPRunConfig) -> dict[str, dict[str, list]]:
    """``{task: {split: examples}}`` for every task, derived tasks included."""
    from mtlkit.nlp.readers import read

    data: dict[str, dict[str, list]] = {}
    for entry in config.tasks:
        spec, name = entry.data, entry.task.name
        if spec.train is None:
            continue
        if spec.format is None:  # TaskData's validator requires it with `train`
            raise ConfigError(f"task {name!r}: data.format is required with data.train")
        splits = {s: [x for path in files for x in read(spec.format, path, spec.options)]
                  for s in SPLITS if (files := getattr(spec, s)) is not None}
        holdout = spec.split or HoldoutSpec()
        fractions = {s: f for s, f in (("validation", holdout.validation), ("test", holdout.test)) if s not in splits and f > 0}
        if fractions:
            splits.update(_holdout(splits["train"], fractions, holdout.seed, name, holdout.group))
        # keyed by task name: a task's rows do not depend on which other tasks the config holds
        data[name] = {s: _subsample(x, spec.max_rows[s], seed_key(config.seed, name, s)) if s in spec.max_rows else x
                      for s, x in splits.items()}
    for entry in config.tasks:
        spec, name = entry.data, entry.task.name
        if spec.from_tasks is None:
            continue
        derived: dict[str, list] = {}
        for s in SPLITS:
            rows = [TextExample(*_texts(x, name, source), domain=source, source=getattr(x, "source", ""))
                    for source in spec.from_tasks for x in data[source].get(s, [])]
            if rows:
                derived[s] = _subsample(rows, spec.max_rows[s], seed_key(config.seed, name, s)) if s in spec.max_rows else rows
        data[name] = derived
    for name, splits in data.items():
        if not splits.get("validation"):
            raise DataError(f"task {name!r}: no validation rows (give data.validation, or data.split)")
    return data


@dataclass
class PreparedNLP:
    config: NLPRunConfig  # resolved tasks
    tasks: list[NLPTask]
    examples: dict[str, dict[str, list]]
    tables: dict[str, dict[str, EncodedTable]]  # split -> task -> table
    tokenizer: Any


def prepare(config: NLPRunConfig) -> PreparedNLP:
    """Read, resolve and featurize every task's splits (DataError/ConfigError before any training)."""
    from mtlkit.nlp.encoder import load_tokenizer

    examples = load_examples(config)
    tasks = [e.task.resolve(examples[e.task.name]["train"]) for e in config.tasks]
    entries = [e.model_copy(update={"task": t}) for e, t in zip(config.tasks, tasks)]
    config = config.model_copy(update={"tasks": entries})
    tokenizer = load_tokenizer(config.encoder)
    tables: dict[str, dict[str, EncodedTable]] = {s: {} for s in SPLITS}
    for task in tasks:
        task.fit(examples[task.name].get("train", []), tokenizer)  # training rows only: nothing of validation/test
        for split, rows in examples[task.name].items():
            task.check_examples(rows, split)
            tables[split][task.name] = task.featurize(rows, tokenizer)
    return PreparedNLP(config, tasks, examples, tables, tokenizer)


def calibrate(prepared: PreparedNLP, model: torch.nn.Module, device: Any = "cpu") -> dict[str, dict[str, Any]]:
    """Each task's ``calibrate`` on the validation outputs of ``model``; ``prepared`` gets the updated tasks."""
    from mtlkit.nlp.evaluation import predict_task

    found: dict[str, dict[str, Any]] = {}
    was_training = model.training
    model.eval()
    try:
        for task in prepared.tasks:
            table = prepared.tables["validation"].get(task.name)
            if table is None or len(table) == 0 or type(task).calibrate is NLPTask.calibrate:
                continue
            outputs, _, _ = predict_task(model, task, table, prepared.config.train.eval_batch_size, device)
            update = task.calibrate(outputs, table, prepared.examples[task.name]["validation"])
            if update:
                found[task.name] = update
    finally:
        model.train(was_training)
    if found:
        prepared.tasks = [t.model_copy(update=found[t.name]) if t.name in found else t for t in prepared.tasks]
        by_name = {t.name: t for t in prepared.tasks}
        entries = [e.model_copy(update={"task": by_name[e.task.name]}) for e in prepared.config.tasks]
        prepared.config = prepared.config.model_copy(update={"tasks": entries})
    return found


def _validation(prepared: PreparedNLP, split: str):
    from mtlkit.nlp.evaluation import NLPValidation

    names = prepared.tables[split]
    return NLPValidation(prepared.tasks, names, {t: prepared.examples[t][split] for t in names}, prepared.config.train.eval_batch_size)


def train_nlp_run(config: NLPRunConfig, run_dir: str | Path | None = None, overwrite: bool = False,
                  progress: bool | None = None, callbacks: Sequence[Any] = (), encoder: torch.nn.Module | None = None) -> dict:
    """Train as the config says; return the summary (also written to ``run_dir/summary.json``).

    Relative paths of a config built in Python are relative to the working directory (a loaded
    file's, to its folder); ``config.yaml`` stores them absolute.
    """
    from mtlkit.nlp.model import build_nlp_model
    from mtlkit.outputs import check_output_dir
    from mtlkit.run import run_summary
    from mtlkit.rundir import open_run_dir, removed_on_error
    from mtlkit.sizing import out_of_memory
    from mtlkit.train import Trainer, distributed
    from mtlkit.train.device import resolve_device

    path = check_output_dir(run_dir) if run_dir is not None else None  # before reading any data
    prepared = prepare(config.resolve_paths(Path.cwd()))  # a no-op for a loaded config: already absolute
    config, tasks = prepared.config, prepared.tasks
    spec = config.train if progress is None else config.train.model_copy(update={"progress": progress})
    resolve_device(spec.device)
    ctx = distributed.setup()  # under torchrun: data-parallel (mtlkit.train.distributed); only rank 0 writes
    torch.manual_seed(config.seed)
    with out_of_memory("building the model"):
        model = build_nlp_model(config.encoder, tasks, config.mixing, encoder)
    run = open_run_dir(path, dump_nlp_config(config), overwrite) if path is not None and ctx.is_main else None
    resume = run.resume if run is not None else False
    if ctx.enabled:  # rank 0 decided (and cleared the directory) before any rank looks for last.pt
        resume = bool(distributed.broadcast_object(resume))
    with removed_on_error(run):
        warm = None
        if config.init_from is not None and not resume:  # a resumed run's own checkpoint wins
            from mtlkit.train.warm_start import checkpoint_state, warm_start

            warm = warm_start(model, checkpoint_state(config.init_from))
        callbacks = [*callbacks, *gradient_diagnostics(spec, model.loss_task_names, path if ctx.is_main else None)]
        trainer = Trainer(model, tasks, build_balancer(config.balancer, tasks), spec, path, callbacks)
        sampling = config.sampling.model_copy(update={"strategy": config.strategy})
        train = TaskSampler(prepared.tables["train"], spec.batch_size, sampling, seed=config.seed, epochs=spec.epochs,
                            transforms={t.name: t.transform_batch for t in tasks})
        with out_of_memory("training"):
            result = trainer.fit(train, _validation(prepared, "validation"), resume=resume)
        calibration = calibrate(prepared, model, trainer.device)  # the best model's validation outputs, never test
        if calibration and path is not None and ctx.is_main:
            from mtlkit.outputs import write_text

            write_text(path / CALIBRATION, json.dumps(calibration, indent=1))
        config, tasks = prepared.config, prepared.tasks
    test = _validation(prepared, "test").evaluate(model, trainer.device) if prepared.tables["test"] else None
    summary = run_summary(
        result, model, test,
        backbone=Path(config.encoder.name).name + (f" + {config.mixing.backbone}" if config.mixing else ""),
        encoder=config.encoder.name,
        balancer=config.balancer.name,
        sampling=sampling.strategy,
        tasks=[t.name for t in tasks],
        kinds={t.name: t.kind for t in tasks},
        rows={t.name: {s: len(x) for s, x in prepared.examples[t.name].items()} for t in tasks},
        processes=ctx.world,
        trained_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        **({"init_from": {"path": str(config.init_from), "loaded": warm.loaded, "fresh": warm.fresh}} if warm else {}),
        **({"calibration": calibration} if calibration else {}),
    )
    if path is not None and ctx.is_main:
        from mtlkit.outputs import write_text

        if test is not None:
            write_text(path / "test_metrics.json", json.dumps(test, indent=1))
        write_text(path / SUMMARY, json.dumps(summary, indent=1))
    return summary


def load_nlp_config(run_dir: str | Path, task_updates: dict[str, dict[str, Any]] | None = None) -> NLPRunConfig:
    """A trained run's ``config.yaml`` (its tasks already resolved), with ``calibration.json`` then ``task_updates`` applied."""
    from mtlkit.config import read_config_file

    run_dir = Path(run_dir)
    for name in ("config.yaml", "best.pt"):
        if not (run_dir / name).exists():
            raise ConfigError(f"{run_dir}: not a trained mtlkit run (no {name})")
    raw = read_config_file(run_dir / "config.yaml")
    if (run_dir / CALIBRATION).is_file():
        try:
            calibration = json.loads((run_dir / CALIBRATION).read_text(encoding="utf-8"))
        except ValueError as error:
            raise ConfigError(f"{run_dir / CALIBRATION}: damaged ({error}); retrain the run") from None
        for entry in raw["tasks"]:
            entry.update(calibration.get(entry["name"], {}))
    for task, update in (task_updates or {}).items():
        entry = next((t for t in raw["tasks"] if t["name"] == task), None)
        if entry is None:
            raise ConfigError(f"{run_dir}: no task {task!r} to update")
        entry.update(update)
    return parse_nlp_config(raw, str(run_dir / "config.yaml"))


def load_nlp_model(run_dir: str | Path, config: NLPRunConfig) -> torch.nn.Module:
    """The run's best model (``best.pt``) for ``config``'s tasks, on the CPU, in eval mode; no data is read."""
    from mtlkit.nlp.model import build_nlp_model
    from mtlkit.train.checkpoint import load_checkpoint

    model = build_nlp_model(config.encoder, config.task_list(), config.mixing)
    path = Path(run_dir) / "best.pt"
    load_weights(model, load_checkpoint(path, "cpu", DAMAGED_RUN_HINT)["model"], path)
    return model.eval()


def load_nlp_run(run_dir: str | Path, task_updates: dict[str, dict[str, Any]] | None = None) -> tuple[PreparedNLP, torch.nn.Module]:
    """A trained run's data (re-read and featurized) and its best model, in eval mode.

    ``task_updates`` changes inference-time options of tasks before featurizing, e.g.
    ``{"qa": {"answer_threshold": 0.5}}`` to score a QA run with paragraph filtering.
    """
    prepared = prepare(load_nlp_config(run_dir, task_updates))
    return prepared, load_nlp_model(run_dir, prepared.config)


def evaluate_nlp_run(run_dir: str | Path, task_updates: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """``{split: {task: metrics}}`` of a run's best checkpoint on its validation and test splits."""
    prepared, model = load_nlp_run(run_dir, task_updates)
    return {split: _validation(prepared, split).evaluate(model) for split in ("validation", "test") if prepared.tables[split]}


__all__ = ["CALIBRATION", "PreparedNLP", "calibrate", "evaluate_nlp_run", "load_examples", "load_nlp_config", "load_nlp_model", "load_nlp_run",
           "prepare", "train_nlp_run"]
