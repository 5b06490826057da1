"""What a service serves: a trained run (PyTorch) or an export (ONNX, TorchScript), behind one interface.

:func:`load_predictor` looks at the directory: one with ``manifest.json`` is an export written by
``mtlkit export`` and runs through :class:`mtlkit.export.ExportedModel` (onnxruntime or
``torch.jit``, no model code); one with ``config.yaml`` is a run and runs its PyTorch model.
Either way the :class:`Predictor` has the fitted schema (the request rows are encoded with it),
the tasks as ``/schema`` describes them, the fused score, and two steps:

- ``encode(table, source)``: raw Arrow rows → the model's inputs, numpy arrays by name. Rows are
  encoded independently, so the inputs of several requests concatenate into one batch
  (:mod:`mtlkit.serve.batching`);
- ``forward(inputs)``: inputs → the columns of :func:`mtlkit.run.predict_table` (class and
  ``<task>_p<c>`` columns for multiclass tasks, ``fused_score`` when configured).

It also remembers the files the model was loaded from, so ``/health`` can tell when they are
gone or replaced (:meth:`Predictor.files_problem`).

Example (needs a run or an export directory)::

    predictor = load_predictor("runs/census/export/onnx")
    predictor.backend, [t.name for t in predictor.tasks]      # ('onnx', ['income', 'marital'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from mtlkit.data.schema import FittedSchema
from mtlkit.errors import ConfigError
from mtlkit.tasks import TaskKind

BACKENDS = ("pytorch", "onnx", "torchscript")
NUMERIC_INPUT = "numeric"  # the numeric block's name in both backends' inputs
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ServedTask:
    """A task as served: its kind, what its value is (``output``) and, for multiclass, the class count."""

    name: str
    kind: TaskKind
    output: str
    n_classes: int | None = None

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind.value, "output": self.output}
        if self.n_classes is not None:
            entry["n_classes"] = self.n_classes
        return entry


def _regression_output(label_transform: str | None) -> str:
    return "value" + (" (expm1 of the log1p model)" if label_transform == "log1p" else "")


def file_stamp(path: Path) -> tuple[int, int]:
    """Size and modification time: what tells a model file replaced since it was loaded."""
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def changed_files_problem(stamps: dict[Path, tuple[int, int]], show_paths: bool = False) -> str | None:
    """Why files loaded with ``stamps`` are no longer what was loaded (gone or replaced), or None."""
    for path, stamp in stamps.items():
        name = str(path.resolve()) if show_paths else path.name
        try:
            if file_stamp(path) != stamp:
                return f"model file {name} changed since the server loaded it: restart the server to serve it"
        except OSError:
            return f"model file {name} is gone (the run or export directory was moved or deleted)"
    return None


@dataclass
class Predictor:
    """One served model: ``encode`` raw rows to inputs, ``forward`` inputs to prediction columns."""

    backend: str  # "pytorch" | "onnx" | "torchscript"
    directory: Path
    schema: FittedSchema
    tasks: list[ServedTask]
    fusion: dict[str, Any] | None  # model.fusion: kind, weights, offsets; None without a fused score
    backbone: str
    encode: Callable[[pa.Table, str], Inputs] = field(repr=False)
    forward: Callable[[Inputs], dict[str, np.ndarray]] = field(repr=False)
    files: list[Path] = field(default_factory=list)  # what the model was loaded from
    run_dir: str | None = None  # the run an export was made from
    stamps: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.stamps = {path: file_stamp(path) for path in self.files}

    def predict_table(self, table: pa.Table, source: str = "request") -> dict[str, np.ndarray]:
        return self.forward(self.encode(table, source))

    @property
    def numeric_columns(self) -> list[str]:
        """The feature of each column of the numeric input (a value column, then its missing flag if any)."""
        return [f.name for f in self.schema.numeric for _ in range(1 + f.has_missing_flag)]

    def files_problem(self, show_paths: bool = False) -> str | None:
        """Why the files the model was loaded from are no longer what was loaded (gone or replaced), or None."""
        return changed_files_problem(self.stamps, show_paths)


def _served_tasks_of_run(tasks: list[Any]) -> list[ServedTask]:
    served = []
    for task in tasks:
        if task.kind is TaskKind.BINARY:
            served.append(ServedTask(task.name, task.kind, task.output))
        elif task.kind is TaskKind.MULTICLASS:
            served.append(ServedTask(task.name, task.kind, "class and probabilities", task.n_classes))
        else:
            served.append(ServedTask(task.name, task.kind, _regression_output(task.label_transform)))
    return served


def run_predictor(run_dir: str | Path) -> Predictor:
    """The best model of a trained run, in PyTorch (no autograd: ``torch.inference_mode``)."""
    from mtlkit.export import refuse_text_runs
    from mtlkit.run import load_run

    run_dir = Path(run_dir)
    refuse_text_runs(run_dir, "served")
    run = load_run(run_dir)
    fusion = run.model.fusion

    def encode(table: pa.Table, source: str) -> Inputs:
        encoded = run.schema.encode(table, run.tasks, source, with_targets=False)
        return {key: tensor.numpy() for key, tensor in encoded.inputs.items()}

    def forward(inputs: Inputs) -> dict[str, np.ndarray]:
        # As mtlkit.run.predict_table, on inputs already encoded (and perhaps merged from several requests).
        with torch.inference_mode():
            logits = {name: t.float() for name, t in run.model({k: torch.from_numpy(v) for k, v in inputs.items()}).items()}
            columns: dict[str, np.ndarray] = {}
            for task in run.tasks:
                prediction = task.predict(logits[task.name]).numpy()
                if task.kind is TaskKind.MULTICLASS:
                    columns[task.name] = prediction.argmax(axis=1)
                    for c in range(prediction.shape[1]):
                        columns[f"{task.name}_p{c}"] = prediction[:, c]
                else:
                    columns[task.name] = prediction
            if fusion is not None:
                columns["fused_score"] = run.model.fused_score(logits).numpy()
        return columns

    files = [run_dir / name for name in ("config.yaml", "schema.json", "best.pt")]
    return Predictor("pytorch", run_dir, run.schema, _served_tasks_of_run(run.tasks),
                     fusion.model_dump() if fusion is not None else None, run.config.model.backbone,
                     encode, forward, files, str(run_dir.resolve()))


def export_predictor(directory: str | Path, threads: int | None = None) -> Predictor:
    """An export directory (``manifest.json``): the artifact in onnxruntime or ``torch.jit``, no model code."""
    from mtlkit.export import load_exported

    directory = Path(directory)
    exported = load_exported(directory, threads=threads)  # the manifest is checked there
    tasks, fusion = [], None
    for spec in exported.outputs:  # manifest version 1: every task output, then fused_score
        if "task" not in spec:
            fusion = {"kind": spec["kind"], "weights": spec["weights"], "offsets": spec["offsets"]}
            continue
        kind = TaskKind(spec["kind"])
        if kind is TaskKind.BINARY:
            tasks.append(ServedTask(spec["name"], kind, spec["output"]))
        elif kind is TaskKind.MULTICLASS:
            tasks.append(ServedTask(spec["name"], kind, "class and probabilities", int(spec["shape"][1])))
        else:
            tasks.append(ServedTask(spec["name"], kind, _regression_output(spec.get("label_transform"))))
    manifest = exported.manifest
    files = [directory / "manifest.json", directory / manifest["schema"], directory / manifest["artifact"]]
    return Predictor(manifest["format"], directory, exported.schema, tasks, fusion, manifest.get("backbone", "unknown"),
                     exported.encode, exported.predict_encoded, files, manifest.get("run_dir"))


def _smoke_test(predictor: Predictor) -> None:
    """One row of missing values through encode and forward: a model that cannot run fails now, not per request."""
    from mtlkit.serve.rows import rows_to_table

    row = {name: None for name in predictor.schema.feature_columns}
    try:
        predictor.predict_table(rows_to_table(predictor.schema, [row]), "a row of missing values")
    except Exception as error:  # a mismatched export raises whatever its runtime raises
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{predictor.directory}: the model does not run on its schema's inputs ({first[:300]})") from None


def load_predictor(directory: str | Path, threads: int | None = None) -> Predictor:
    """An export (has ``manifest.json``) or a run (has ``config.yaml``); ConfigError for anything else.

    ``threads`` sets onnxruntime's intra-op threads (PyTorch's are set by the caller).
    """
    from mtlkit.export_manifest import MANIFEST

    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        predictor = export_predictor(directory, threads)
    elif (directory / "config.yaml").is_file():
        predictor = run_predictor(directory)
    else:
        what = "does not exist" if not directory.exists() else "is not a directory" if not directory.is_dir() else None
        raise ConfigError(f"{directory}: " + (what or f"not a trained mtlkit run (no config.yaml) nor an mtlkit export (no {MANIFEST})"))
    _smoke_test(predictor)
    return predictor


__all__ = ["BACKENDS", "NUMERIC_INPUT", "Predictor", "ServedTask", "export_predictor", "load_predictor", "run_predictor"]
