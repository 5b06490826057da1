"""What a service serves: a trained run (PyTorch) or an export (ONNX, TorchScript), behind one interface.

:func:`load_predictor` looks at the directory: one with ``manifest.json`` is an export written by
``mtlkit export`` and runs through :class:`mtlkit.export.ExportedModel` (onnxruntime or
``torch.jit``, no model code); one with ``config.yaml`` is a run and runs through
:func:`mtlkit.run.predict_table`. Either way the :class:`Predictor` has the fitted schema (the
request rows are encoded with it), the tasks as ``/schema`` describes them, the fused score and a
``predict_table`` giving the columns of :func:`mtlkit.run.predict_table`.

Example (needs a run or an export directory)::

    predictor = load_predictor("runs/census/export/onnx")
    predictor.backend, [t.name for t in predictor.tasks]      # ('onnx', ['income', 'marital'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from mtlkit.data.schema import FittedSchema
from mtlkit.errors import ConfigError
from mtlkit.tasks import TaskKind

BACKENDS = ("pytorch", "onnx", "torchscript")


@dataclass(frozen=True)
class ServedTask:
    """A task as served: its kind, what its value is (``output``) and, for multiclass, the class count."""

    name: str
    kind: TaskKind
    output: str
    n_classes: Optional[int] = None

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind.value, "output": self.output}
        if self.n_classes is not None:
            entry["n_classes"] = self.n_classes
        return entry


def _regression_output(label_transform: Optional[str]) -> str:
    return "value" + (" (expm1 of the log1p model)" if label_transform == "log1p" else "")


@dataclass
class Predictor:
    """One served model: ``predict_table(table, source)`` → ``{column: values}`` as :func:`mtlkit.run.predict_table`."""

    backend: str  # "pytorch" | "onnx" | "torchscript"
    directory: Path
    schema: FittedSchema
    tasks: list[ServedTask]
    fusion: Optional[dict[str, Any]]  # model.fusion: kind, weights, offsets; None without a fused score
    backbone: str
    predict_table: Callable[[pa.Table, str], dict[str, np.ndarray]] = field(repr=False)
    run_dir: Optional[str] = None  # the run an export was made from


def run_predictor(run_dir: str | Path) -> Predictor:
    """The best model of a trained run, in PyTorch."""
    from mtlkit.export import refuse_text_runs
    from mtlkit.run import load_run, predict_table

    run_dir = Path(run_dir)
    refuse_text_runs(run_dir, "served")
    run = load_run(run_dir)
    tasks = []
    for task in run.tasks:
        if task.kind is TaskKind.BINARY:
            tasks.append(ServedTask(task.name, task.kind, task.output))
        elif task.kind is TaskKind.MULTICLASS:
            tasks.append(ServedTask(task.name, task.kind, "class and probabilities", task.n_classes))
        else:
            tasks.append(ServedTask(task.name, task.kind, _regression_output(task.label_transform)))
    fusion = getattr(run.model, "fusion", None)
    return Predictor("pytorch", run_dir, run.schema, tasks, fusion.model_dump() if fusion is not None else None,
                     run.config.model.backbone, lambda table, source: predict_table(run, table, source), str(run_dir))


def export_predictor(directory: str | Path, threads: Optional[int] = None) -> Predictor:
    """An export directory (``manifest.json``): the artifact in onnxruntime or ``torch.jit``, no model code."""
    from mtlkit.export import load_exported

    directory = Path(directory)
    exported = load_exported(directory, threads=threads)
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
    return Predictor(manifest["format"], directory, exported.schema, tasks, fusion, manifest.get("backbone", "unknown"),
                     exported.predict_table, manifest.get("run_dir"))


def load_predictor(directory: str | Path, threads: Optional[int] = None) -> Predictor:
    """An export (has ``manifest.json``) or a run (has ``config.yaml``); ConfigError for anything else.

    ``threads`` sets onnxruntime's intra-op threads (PyTorch's are set by the caller).
    """
    from mtlkit.export import MANIFEST

    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        return export_predictor(directory, threads)
    if (directory / "config.yaml").is_file():
        return run_predictor(directory)
    what = "does not exist" if not directory.exists() else "is not a directory" if not directory.is_dir() else None
    raise ConfigError(f"{directory}: " + (what or f"not a trained mtlkit run (no config.yaml) nor an mtlkit export (no {MANIFEST})"))


__all__ = ["BACKENDS", "Predictor", "ServedTask", "export_predictor", "load_predictor", "run_predictor"]
