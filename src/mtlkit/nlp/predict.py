"""Predictions of a trained NLP run on new texts: ``mtlkit predict RUN_DIR DATA`` for a run with ``encoder:``.

:func:`predict_nlp_run` loads the run's best checkpoint from its ``config.yaml``, whose task
definitions already hold what training resolved (label lists, candidate counts), so no training
data is read. DATA is read with the chosen task's reader (its ``format`` and ``options`` in the
run's config, or the ``format``/``options`` given); gold annotation in it is dropped, so labels
the run never saw do not matter (a relation task keeps the entities: they are the candidate
arguments, PURE's gold-entity setting). Each example then gets one record from the task kind's
``predict_records`` (:mod:`mtlkit.nlp.base`):

- classification / domain: ``{"label", "probabilities": {label: p}}``; regression: ``{"value"}``;
- ranking: ``{"best": index, "scores": [...]}``; tagging: ``{"tokens", "tags"}``;
- span_qa: ``{"id", "answer"}``; span_ner: ``{"tokens", "entities": [{"start", "end", "type", "text"}]}``;
- relation: ``{"tokens", "relations": [{"subject", "subject_type", "object", "object_type", "type"}]}``.

The output is JSON lines (``.jsonl``): one record per input example, in input order, each with
``"task"``. ``.csv`` takes the flat kinds only (classification, domain: ``label`` and one
``p_<label>`` column per class; regression: ``value``). The file is written next to its
destination and renamed at the end, so a failure leaves nothing half written. A run with several
tasks needs ``task``; masked-LM tasks have nothing to predict.

Example (shell)::

    mtlkit predict runs/glue new.tsv --task sst2            # -> predictions.jsonl
    {"task": "sst2", "label": "1", "probabilities": {"0": 0.08, "1": 0.92}}

CSV rows are the records flattened:

    >>> flat_row({"task": "sst2", "label": "1", "probabilities": {"0": 0.25, "1": 0.75}})
    {'task': 'sst2', 'label': '1', 'p_0': 0.25, 'p_1': 0.75}
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtlkit.errors import ConfigError
from mtlkit.nlp.base import NLPTask

OUTPUT_SUFFIXES = (".jsonl", ".csv")
FLAT_KINDS = ("classification", "domain", "regression")  # kinds whose records are one CSV row


def flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of a classification / regression record (probabilities as ``p_<label>`` columns)."""
    row = {k: v for k, v in record.items() if k != "probabilities"}
    row.update({f"p_{label}": p for label, p in record.get("probabilities", {}).items()})
    return row


def _unlabelled(task: NLPTask, examples: Sequence[Any]) -> list[Any]:
    """The examples without gold annotation (a relation task keeps the entities it classifies pairs of)."""
    out = []
    for ex in examples:
        fields = {f.name for f in dataclasses.fields(ex)} if dataclasses.is_dataclass(ex) else set()
        update: dict[str, Any] = {k: v for k, v in (("label", None), ("domain", None), ("answers", ()), ("relations", ()))
                                  if k in fields}
        if "tags" in fields:
            update["tags"] = ("O",) * len(ex.tokens)
        if "entities" in fields and task.kind != "relation":
            update["entities"] = ()
        out.append(dataclasses.replace(ex, **update) if update else ex)
    return out


def _pick_task(config: Any, task: str | None, run_dir: Path) -> Any:
    """The config entry of the task to predict."""
    entries = {e.task.name: e for e in config.tasks}
    predictable = [name for name, e in entries.items() if not e.task.auxiliary]
    if task is not None:
        if task not in entries:
            raise ConfigError(f"{run_dir}: no task {task!r}; choose one of: {', '.join(predictable)}")
        if entries[task].task.auxiliary:
            raise ConfigError(f"task {task!r} ({entries[task].task.kind}) is an auxiliary objective with nothing to predict; "
                              f"choose one of: {', '.join(predictable)}")
        return entries[task]
    if len(predictable) != 1:
        raise ConfigError(f"{run_dir}: the run has {len(predictable)} tasks to predict; choose one with --task: "
                          f"{', '.join(predictable)}" if predictable else f"{run_dir}: the run has no task with predictions")
    return entries[predictable[0]]


def _device(spec: str) -> torch.device:
    """The run's training device when it is available here, else the CPU."""
    if spec == "auto" or spec.startswith("cuda"):
        return torch.device("cuda" if spec == "auto" else spec) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(spec)


def _write(out: Path, records: list[dict[str, Any]]) -> None:
    """JSON lines or CSV, through a temporary file renamed at the end (mtlkit.outputs.atomic_output)."""
    from mtlkit.outputs import atomic_output

    with atomic_output(out) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        if out.suffix.lower() == ".csv":
            rows = [flat_row(r) for r in records]
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["task"])
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def predict_nlp_run(run_dir: str | Path, data: str | Path, out: str | Path, task: str | None = None,
                    format: str | None = None, options: dict[str, Any] | None = None) -> int:
    """Write one prediction record per example of ``data`` for ``task`` of the run; return the count."""
    from mtlkit.nlp.encoder import load_tokenizer
    from mtlkit.nlp.evaluation import predict_task
    from mtlkit.nlp.readers import check_options, names, read
    from mtlkit.nlp.run import load_nlp_config, load_nlp_model
    from mtlkit.outputs import check_output_file
    from mtlkit.rundir import WRITTEN

    run_dir, out = Path(run_dir), Path(out)
    check_output_file(out, "--out", [data], run_dir, sorted(WRITTEN))
    config = load_nlp_config(run_dir)  # tasks resolved when the run wrote config.yaml
    entry = _pick_task(config, task, run_dir)
    chosen = entry.task
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out {out}: write predictions of an NLP run to a .jsonl (or, for {'/'.join(FLAT_KINDS)} tasks, a .csv) file")
    if out.suffix.lower() == ".csv" and chosen.kind not in FLAT_KINDS:
        raise ConfigError(f"--out {out}: task {chosen.name!r} ({chosen.kind}) has nested predictions; write them to a .jsonl file")
    reader = format or entry.data.format
    if reader is None:
        raise ConfigError(f"task {chosen.name!r} took its texts from tasks {entry.data.from_tasks}: give the format of "
                          f"{data} (--format; one of: {', '.join(names())})")
    if reader not in names():
        raise ConfigError(f"--format: unknown format {reader!r}; choose one of: {', '.join(names())}")
    if options is None:  # the run's reader options belong to the run's format only
        options = dict(entry.data.options) if reader == entry.data.format else {}
    check_options(reader, options)
    examples = _unlabelled(chosen, read(reader, data, options))

    table = chosen.featurize(examples, load_tokenizer(config.encoder))
    device = _device(config.train.device)
    model = load_nlp_model(run_dir, config).to(device)
    # None for a table without rows (e.g. relation: no sentence with two entities)
    outputs = predict_task(model, chosen, table, config.train.eval_batch_size, device)[0]
    records = [{"task": chosen.name, **r} for r in chosen.predict_records(outputs, table, examples)]
    if len(records) != len(examples):  # a kind's predict_records broke its contract
        raise RuntimeError(f"task {chosen.name!r}: {len(records)} prediction records for {len(examples)} examples")
    _write(out, records)
    return len(records)


__all__ = ["FLAT_KINDS", "flat_row", "predict_nlp_run"]
