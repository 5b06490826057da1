"""``mtlkit export RUN --format onnx`` for an NLP run: encoder and every task head in one ONNX graph.

The graph takes the featurized token tensors — ``input_ids``, ``attention_mask`` (and
``token_type_ids`` when the encoder has segments) ``int64 [batch, sequence]`` — plus the extra
inputs the token-level kinds featurize (span QA's ``tok_answer_mask`` ``bool [batch, sequence]``,
span NER's span positions, relation's marker positions), and returns every task's **head
output** (the logits ``mtlkit predict`` decodes: ``[batch, classes]``, ``[batch]``, tagging's
``[batch, sequence, tags]``, span QA's ``[batch, sequence, 3]``, …). Batch, sequence and span
axes are dynamic. Tokenization and decoding stay in Python with the run's tokenizer, copied to
``tokenizer/`` next to ``model.onnx``, and the task definitions, kept in ``manifest.json`` — so an
export answers exactly the records of the run (:mod:`mtlkit.serve.text` serves both).

Before anything is written, the graph is run by onnxruntime on **real inputs** — the first
:data:`VERIFY_EXAMPLES` examples of each task's validation (else train) file, featurized as
``predict`` does, so batch and sequence lengths differ from the tracing example — and compared
with PyTorch on each task's head output: ``|onnx − pytorch| ≤ atol + rtol·|pytorch|``; the
largest difference per task and per kind goes in ``manifest["verification"]``. Ranking tasks
(candidate × token inputs) are refused with a one-line error.

Example (needs a trained NLP run)::

    result = export_nlp_run("runs/glue")                # -> runs/glue/export/onnx/{model.onnx, tokenizer/, manifest.json}
    result.manifest["verification"]["max_abs_diff_by_kind"]   # {'classification': 4e-07, 'tagging': 6e-07, ...}
    model = load_text_export(result.directory)          # what `mtlkit serve runs/glue/export/onnx` runs
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.export import ExportError, ExportResult, _reason, _require, _Runner
from mtlkit.export_manifest import MANIFEST, MANIFEST_VERSION, read_manifest
from mtlkit.nlp.base import NLPTask
from mtlkit.nlp.featurize import TEXT_INPUTS

ARTIFACT = "model.onnx"
TOKENIZER = "tokenizer"
VERIFY_EXAMPLES = 8
ATOL = 1e-4  # float32 attention over a few layers: observed differences are ~1e-6 on logits of order 1
RTOL = 1e-4
SEQUENCE = "sequence"
DTYPES = {torch.int64: "int64", torch.bool: "bool", torch.float32: "float32", torch.int32: "int32"}
NUMPY = {"int64": np.int64, "bool": np.bool_, "float32": np.float32, "int32": np.int32}


class TextServingModule(nn.Module):
    """Featurized tensors in (positional, ``input_keys`` order), every task's head output out (``names`` order)."""

    def __init__(self, model: nn.Module, names: Sequence[str], input_keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names, self.input_keys = model, list(names), list(input_keys)

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(dict(zip(self.input_keys, tensors)), self.names, trim=False)
        return tuple(outputs[name] for name in self.names)


def _onnx_name(key: str, taken: set[str]) -> str:
    name = re.sub(r"\W", "_", key)
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def input_specs(tables: dict[str, Any]) -> list[dict[str, Any]]:
    """The graph inputs, from featurized tables of every task: name, the model's key, dtype, axes, tasks that read it."""
    specs: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for key in TEXT_INPUTS:
        if any(key in t.inputs for t in tables.values()):
            specs[key] = {"name": _onnx_name(key, taken), "key": key, "dtype": "int64", "axes": ["batch", SEQUENCE], "tasks": []}
    for name, table in tables.items():
        for key, value in table.inputs.items():
            if key in TEXT_INPUTS:
                if value.dim() != 2:
                    raise ExportError(f"task {name!r}: its {key} is {value.dim()}-dimensional (candidates × tokens): "
                                      "ranking tasks cannot be exported yet")
                specs[key]["tasks"].append(name)
                continue
            if value.dim() > 2 or value.dtype not in DTYPES:
                raise ExportError(f"task {name!r}: input {key!r} ({value.dtype}, {value.dim()} axes) cannot be a graph input")
            axes = ["batch", SEQUENCE] if key.startswith("tok:") else ["batch", f"{_onnx_name(key, set())}_size"][: value.dim()]
            spec = specs.setdefault(key, {"name": _onnx_name(key, taken), "key": key, "dtype": DTYPES[value.dtype], "axes": axes, "tasks": []})
            spec["tasks"].append(name)
    return list(specs.values())


def filler(spec: dict[str, Any], batch: int, length: int, size: int = 1) -> np.ndarray:
    """A stand-in for an input no asked task reads (zeros): the graph computes every head."""
    shape = [batch if a == "batch" else length if a == SEQUENCE else size for a in spec["axes"]]
    return np.zeros(shape, dtype=NUMPY[spec["dtype"]])


def graph_inputs(specs: Sequence[dict[str, Any]], inputs: dict[str, Tensor], size: int = 1) -> dict[str, np.ndarray]:
    """Numpy inputs by graph name: the given tensors, zeros for the rest (and ``token_type_ids`` when not made)."""
    ids = inputs["input_ids"]
    batch, length = int(ids.shape[0]), int(ids.shape[-1])
    feed = {}
    for spec in specs:
        value = inputs.get(spec["key"])
        feed[spec["name"]] = (value.numpy().astype(NUMPY[spec["dtype"]], copy=False) if value is not None
                              else filler(spec, batch, length, size))
    return feed


def _verification_examples(entry: Any, task: NLPTask, fallback: list[str]) -> list[Any]:
    """Up to VERIFY_EXAMPLES unlabelled examples of the task's own data (validation, else train)."""
    from mtlkit.nlp.examples import TextExample
    from mtlkit.nlp.predict import _unlabelled
    from mtlkit.nlp.readers import read

    spec = entry.data
    files = spec.validation or spec.train
    if files and spec.format is not None:
        try:
            return _unlabelled(task, read(spec.format, files[0], spec.options)[:VERIFY_EXAMPLES])
        except MtlkitError as error:
            raise ExportError(f"task {task.name!r}: verifying the export reads the run's data, which failed ({error}); "
                              "give the data back or export with --no-verify") from None
    return [TextExample(text) for text in fallback[:VERIFY_EXAMPLES]]  # from_tasks: the source tasks' texts


def _texts(examples: Sequence[Any]) -> list[str]:
    from mtlkit.nlp.examples import texts_of

    return [texts_of(ex)[0] for ex in examples]


def _difference(got: np.ndarray, want: Tensor) -> tuple[float, float]:
    """(largest |difference|, largest |difference| / allowed) on the common shape."""
    reference = want.float().numpy().astype(np.float64)
    got = got.astype(np.float64)
    index = tuple(slice(0, min(a, b)) for a, b in zip(got.shape, reference.shape))
    diff = np.abs(got[index] - reference[index])
    if not diff.size:
        return 0.0, 0.0
    return float(diff.max()), float((diff / (ATOL + RTOL * np.abs(reference[index]))).max())


def export_nlp_run(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, verify: bool = True,
                   opset: int | None = None) -> ExportResult:
    """Export an NLP run's best model to ``out`` (default ``RUN_DIR/export/onnx``): model.onnx, tokenizer/, manifest.json."""
    from mtlkit import __version__
    from mtlkit.nlp.encoder import load_tokenizer
    from mtlkit.nlp.run import load_nlp_config, load_nlp_model

    if format != "onnx":
        raise ExportError(f"an NLP run exports to onnx only, not {format!r}")
    for name in ("onnx", "onnxscript", "onnxruntime"):
        _require(name, "ONNX")
    run_dir = Path(run_dir)
    config = load_nlp_config(run_dir)
    tokenizer = load_tokenizer(config.encoder)
    model = load_nlp_model(run_dir, config)
    entries = [e for e in config.tasks if not e.task.auxiliary]
    if not entries:
        raise ExportError(f"{run_dir}: the run has no task with predictions to export")
    names = [e.task.name for e in entries]
    out = Path(out) if out is not None else run_dir / "export" / format
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")

    examples: dict[str, list[Any]] = {}
    fallback: list[str] = []
    for entry in sorted(entries, key=lambda e: e.data.from_tasks is not None):  # own data first: derived tasks take their texts
        examples[entry.task.name] = _verification_examples(entry, entry.task, fallback)
        fallback += _texts(examples[entry.task.name])
    tables = {e.task.name: e.task.featurize(examples[e.task.name], tokenizer) for e in entries}
    specs = input_specs(tables)
    module = TextServingModule(model, names, [s["key"] for s in specs]).eval()

    # The tracing example: 3 rows of the first task's tokens; every size ≥ 2 and distinct, so no axis is specialised.
    first = tables[names[0]]
    rows = first.inputs["input_ids"][:3]
    batch, length = 3, int(rows.shape[1])
    base = {k: torch.cat([v[:3]] * 3)[:3] for k, v in first.inputs.items() if k in TEXT_INPUTS}
    example = tuple(base[s["key"]] if s["key"] in base else torch.from_numpy(filler(s, batch, length, size=5)) for s in specs)
    dims = {"batch": torch.export.Dim("batch"), SEQUENCE: torch.export.Dim(SEQUENCE)}
    dynamic = (tuple({i: dims.setdefault(axis, torch.export.Dim(axis)) for i, axis in enumerate(s["axes"])} for s in specs),)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{ARTIFACT}.tmp"
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(tmp), dynamo=True, input_names=[s["name"] for s in specs], output_names=names,
                              dynamic_shapes=dynamic, opset_version=opset, external_data=False, verbose=False)
    except Exception as error:  # exporters raise many types; the user needs the reason in one line
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{run_dir}: the NLP model cannot be exported to onnx: {_reason(error)}") from error
    finally:
        registration.setLevel(level)

    kinds = {e.task.name: e.task.kind for e in entries}
    verification: dict[str, Any] = {"checked": False, "atol": ATOL, "rtol": RTOL, "rule": "|onnx - pytorch| <= atol + rtol * |pytorch|, head outputs"}
    if verify:
        try:
            runner = _Runner(tmp, "onnx", [s["name"] for s in specs])
            by_task, rows_checked, worst = {}, {}, 0.0
            for name in names:
                table = tables[name]
                if len(table) == 0:
                    continue
                with torch.inference_mode():
                    reference = model(table.inputs, [name])[name]
                got = runner(graph_inputs(specs, table.inputs))[names.index(name)]
                by_task[name], ratio = _difference(got, reference)
                rows_checked[name] = len(table)
                worst = max(worst, ratio)
        except Exception as error:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"{run_dir}: the exported onnx model does not run: {_reason(error)}") from error
        if worst > 1.0:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"{run_dir}: the exported onnx model differs from PyTorch by up to {max(by_task.values()):.3g} "
                              f"(allowed {ATOL:g} + {RTOL:g}·|value|); not written")
        by_kind: dict[str, float] = {}
        for name, value in by_task.items():
            by_kind[kinds[name]] = max(by_kind.get(kinds[name], 0.0), value)
        verification.update(checked=True, inputs="the first examples of each task's validation (else train) file",
                            rows=rows_checked, max_abs_diff=max(by_task.values(), default=0.0),
                            max_abs_diff_by_task=by_task, max_abs_diff_by_kind=by_kind)

    import onnx

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "run_kind": "nlp",
        "format": "onnx",
        "artifact": ARTIFACT,
        "tokenizer": TOKENIZER,
        "run_dir": str(run_dir.resolve()),
        "backbone": Path(config.encoder.name).name,
        "encoder": config.encoder.name,
        "pooling": config.encoder.pooling,
        "mtlkit_version": __version__,
        "torch_version": torch.__version__,
        "opset": next((o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": specs,
        "outputs": [{"name": name, "task": name, "kind": kinds[name], "output": "head output (logits), decoded by the kind"} for name in names],
        "tasks": [{"kind": e.task.kind, "definition": e.task.model_dump(mode="json")} for e in entries],
        "verification": verification,
    }
    tokenizer_tmp = out / f".{TOKENIZER}.tmp"
    shutil.rmtree(tokenizer_tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tokenizer_tmp))
    os.replace(tmp, out / ARTIFACT)
    shutil.rmtree(out / TOKENIZER, ignore_errors=True)
    os.replace(tokenizer_tmp, out / TOKENIZER)
    manifest_tmp = out / f".{MANIFEST}.tmp"
    manifest_tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(manifest_tmp, out / MANIFEST)
    return ExportResult(out, out / ARTIFACT, manifest)


def load_text_export(directory: str | Path, threads: int | None = None) -> Any:
    """An NLP export as a :class:`~mtlkit.serve.text.TextModel` run by onnxruntime (no model code, no encoder weights)."""
    import mtlkit.nlp.kinds  # noqa: F401  (registers the kinds)
    from mtlkit.nlp.base import NLP_KINDS
    from mtlkit.nlp.encoder import _quiet, _transformers
    from mtlkit.serve.text import TextModel

    directory = Path(directory)
    manifest = read_manifest(directory)
    transformers = _transformers()
    try:
        with _quiet(transformers):
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory / manifest["tokenizer"]), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{directory / manifest['tokenizer']}: no tokenizer ({_reason(error)}); re-export the run") from None
    tasks: dict[str, NLPTask] = {}
    for i, entry in enumerate(manifest["tasks"]):
        try:
            task = NLP_KINDS.get(entry["kind"])(**entry["definition"])
        except Exception as error:
            raise ConfigError(f"{directory / MANIFEST}: tasks[{i}] is not a task definition ({_reason(error)}); re-export the run") from None
        tasks[task.name] = task
    specs, names = manifest["inputs"], [o["name"] for o in manifest["outputs"]]
    if sorted(names) != sorted(tasks):
        raise ConfigError(f"{directory / MANIFEST}: the outputs {names} are not the tasks {list(tasks)}; re-export the run")
    artifact = directory / manifest["artifact"]
    try:
        runner = _Runner(artifact, "onnx", [s["name"] for s in specs], threads)
    except ExportError:
        raise
    except Exception as error:
        raise ConfigError(f"{artifact}: cannot be loaded as onnx ({_reason(error)}); re-export the run") from None

    def forward(inputs: dict[str, Tensor], asked: list[str]) -> dict[str, Any]:
        outputs = runner(graph_inputs(specs, inputs))
        return {name: torch.from_numpy(outputs[names.index(name)]) for name in asked}

    files = [directory / MANIFEST, artifact]
    return TextModel("onnx", directory, tasks, tokenizer, manifest.get("encoder", "unknown"), forward, files, manifest.get("run_dir"))


__all__ = ["ARTIFACT", "TOKENIZER", "TextServingModule", "export_nlp_run", "input_specs", "load_text_export"]
