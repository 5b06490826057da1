"""Export a trained run to TorchScript or ONNX, with its preprocessing contract.

The exported graph works on the *encoded* tensors, exactly what :meth:`FittedSchema.encode` makes
from raw rows, and returns every task's *served* output — what :meth:`Task.predict` gives
(calibrated probability or odds, class probabilities, a value in label units) — plus the fused
ranking score when ``model.fusion`` is configured. The raw-row → tensor step is not in the graph:
it is the fitted ``schema.json``, copied next to the artifact. ``manifest.json`` says which tensor
is which:

- ``inputs``: ``categorical`` ``int64 [batch, F]`` (vocabulary ids, 0 = unseen/missing),
  ``numeric`` ``float32 [batch, N]`` (standardised values and missing-value flags), one
  ``seq_<name>`` ``int64 [batch, max_len]`` per sequence feature (0 = padding/unseen). Bias
  features (position, …) are not inputs: serving treats them as missing, as ``predict`` does.
- ``outputs``: one per task in task order, then ``fused_score``; each names its post-processing.
- ``verification``: the largest difference to PyTorch on random encoded rows, and the tolerance.

The batch axis is dynamic. :func:`load_exported` runs an export on a raw Arrow table
(``onnxruntime`` or ``torch.jit.load``) and returns the same columns as
:func:`mtlkit.run.predict_table`.

Example:
    >>> import torch
    >>> from mtlkit.tasks import Task
    >>> from mtlkit.nn import TabularEncoder
    >>> from mtlkit.models.shared_bottom import SharedBottom
    >>> from mtlkit.models.multitask import MultiTaskModel
    >>> tasks = [Task(name="click", kind="binary"), Task(name="watch", kind="regression", label_transform="log1p")]
    >>> encoder = TabularEncoder([4], numeric_dim=2, embedding_dim=3)
    >>> backbone = SharedBottom(encoder.output_dim, ["click", "watch"], SharedBottom.Options(hidden=[8]))
    >>> module = ServingModule(MultiTaskModel(encoder, backbone, tasks).eval(), tasks, ["categorical", "numeric"])
    >>> click, watch = module(torch.tensor([[1], [3]]), torch.zeros(2, 2))
    >>> click.shape, bool(((click > 0) & (click < 1)).all()), bool((watch > -1).all())
    (torch.Size([2]), True, True)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn

from mtlkit.data.schema import FittedSchema
from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.export_manifest import FORMATS, MANIFEST, MANIFEST_VERSION, read_manifest
from mtlkit.protocols import TrainableModel
from mtlkit.tasks import Task, TaskKind

Format = Literal["torchscript", "onnx"]
ARTIFACT = {"torchscript": "model.pt", "onnx": "model.onnx"}
# allclose-style: |exported − pytorch| ≤ ATOL + RTOL·|pytorch|, on every output. Probabilities are
# in [0, 1], so this is 1e-5 absolute there; values (seconds, odds, fused scores) get 1e-5 relative.
ATOL = 1e-5
RTOL = 1e-5
VERIFY_ROWS = 67  # deliberately not the tracing batch size: checks that the batch axis is dynamic


class ExportError(MtlkitError):
    """A run cannot be exported (or an export does not match PyTorch); the message says why."""


class ServingModule(nn.Module):
    """Encoded tensors in (positional, in ``input_keys`` order), served outputs out, as a tuple.

    The bias input (``inputs["bias"]``) is made here, all zeros = missing, as at serving.
    """

    def __init__(self, model: TrainableModel, tasks: Sequence[Task], input_keys: Sequence[str], n_bias: int = 0) -> None:
        super().__init__()
        self.model = model
        self.tasks = list(tasks)
        self.input_keys = list(input_keys)
        self.n_bias = n_bias
        self.fusion = model.fusion

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        inputs = dict(zip(self.input_keys, tensors))
        if self.n_bias:
            inputs["bias"] = torch.zeros(tensors[0].shape[0], self.n_bias, dtype=torch.long, device=tensors[0].device)
        logits = self.model(inputs)
        predictions = {task.name: task.predict(logits[task.name]) for task in self.tasks}
        outputs = [predictions[task.name] for task in self.tasks]
        if self.fusion is not None:
            outputs.append(self.fusion.score(predictions))
        return tuple(outputs)


# -- the contract: input and output descriptions ---------------------------------------------------


def _sequence_input_name(name: str, taken: set[str]) -> str:
    base = "seq_" + re.sub(r"\W", "_", name)
    candidate, k = base, 1
    while candidate in taken:
        k += 1
        candidate = f"{base}_{k}"
    return candidate


def input_specs(schema: FittedSchema) -> list[dict[str, Any]]:
    """One entry per graph input, in argument order: name, the model's input key, dtype, shape, columns."""
    specs: list[dict[str, Any]] = []
    if schema.categorical:
        specs.append({
            "name": "categorical", "key": "categorical", "dtype": "int64", "shape": ["batch", len(schema.categorical)],
            "features": [f.name for f in schema.categorical], "cardinalities": schema.cardinalities,
            "encoding": "vocabulary (or hash bucket) id per feature; 0 = unseen, rare or missing",
        })
    if schema.numeric:
        columns = []
        for f in schema.numeric:
            columns.append(f.name)
            if f.has_missing_flag:
                columns.append(f"{f.name}:missing")
        specs.append({
            "name": "numeric", "key": "numeric", "dtype": "float32", "shape": ["batch", schema.numeric_dim],
            "columns": columns, "encoding": "clipped, transformed, standardised; missing → training mean plus a 0/1 flag column",
        })
    taken = {s["name"] for s in specs}
    for seq in schema.sequences:
        name = _sequence_input_name(seq.name, taken)
        taken.add(name)
        specs.append({
            "name": name, "key": seq.input_key, "dtype": "int64", "shape": ["batch", seq.max_len], "feature": seq.name,
            "vocabulary_of": seq.share_vocabulary_with or seq.name,
            "encoding": "the last max_len item ids, oldest first, left-aligned; 0 = padding or unseen",
        })
    return specs


def output_specs(tasks: Sequence[Task], fusion: Any = None) -> list[dict[str, Any]]:
    """One entry per graph output: name, task, dtype, shape and the post-processing applied to the logit."""
    specs: list[dict[str, Any]] = []
    for task in tasks:
        spec: dict[str, Any] = {"name": task.name, "task": task.name, "kind": task.kind.value, "dtype": "float32", "shape": ["batch"]}
        if task.kind is TaskKind.BINARY:
            offset = math.log(task.negative_odds_factor)
            spec["logit_offset"] = offset  # log(negative_sampling_rate · negative_weight): calibration
            if task.output == "odds":
                spec.update(output="odds", postprocess="exp(logit + logit_offset)")
            else:
                spec.update(output="probability", postprocess="sigmoid(logit + logit_offset)")
            if task.loss == "jrc":  # two logits per row (JRC): logit = s1 - s0
                spec.update(shape=["batch", 2], postprocess=spec["postprocess"].replace("logit", "(logits[:, 1] - logits[:, 0])", 1))
        elif task.kind is TaskKind.MULTICLASS:
            spec.update(output="class probabilities", shape=["batch", task.n_classes], postprocess="softmax(logits)",
                        prediction="class = argmax over the last axis")
        elif task.loss == "ziln":
            spec.update(output="value", shape=["batch", 3], label_transform="none",
                        postprocess="sigmoid(logits[:, 0]) * exp(logits[:, 1] + softplus(logits[:, 2]) ** 2 / 2)")
        else:
            log1p = task.label_transform == "log1p"
            spec.update(output="value", postprocess="expm1(logit)" if log1p else "identity",
                        label_transform=task.label_transform)
        specs.append(spec)
    if fusion is not None:
        formula = ("sum_k w_k * (c_k + y_k)" if fusion.kind == "weighted_sum" else "prod_k max(c_k + y_k, 0) ** w_k")
        specs.append({"name": "fused_score", "dtype": "float32", "shape": ["batch"], "kind": fusion.kind,
                      "weights": dict(fusion.weights), "offsets": dict(fusion.offsets), "formula": formula,
                      "postprocess": "y_k is the served output of task k; w_k its weight, c_k its offset (default 0)"})
    return specs


# -- export ----------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    directory: Path
    artifact: Path
    manifest: dict[str, Any]


def refuse_text_runs(run_dir: Path, what: str) -> None:
    """NLP runs (config.yaml with a top-level ``encoder:``) have token inputs, not a tabular schema."""
    from mtlkit.config import is_nlp_run

    if is_nlp_run(run_dir):  # a damaged config.yaml is not: load_run reports it
        raise ExportError(f"{run_dir}: an NLP run cannot be {what} yet: only tabular models (categorical, numeric and sequence inputs)")


def _check_exportable(model: TrainableModel, schema: FittedSchema, run_dir: Path) -> None:
    from mtlkit.nn import TabularEncoder

    for encoder in model.input_encoders():
        if not isinstance(encoder, TabularEncoder):
            raise ExportError(f"{run_dir}: only tabular models (categorical, numeric and sequence inputs) can be exported; "
                              f"this model's encoder is {type(encoder).__name__}")
    if not (schema.categorical or schema.numeric or schema.sequences):
        raise ExportError(f"{run_dir}: the schema has no input features to export")


def example_inputs(schema: FittedSchema, specs: Sequence[dict[str, Any]], rows: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Random valid encoded inputs: ids within each field's vocabulary (0 included), standard-normal numerics."""
    generator = torch.Generator().manual_seed(seed)
    cardinality = {f.name: f.cardinality for f in schema.categorical}
    cardinality.update({s.name: s.cardinality for s in schema.sequences if not s.share_vocabulary_with})
    tensors = []
    for spec in specs:
        if spec["key"] == "categorical":
            columns = [torch.randint(0, c, (rows,), generator=generator) for c in spec["cardinalities"]]
            tensors.append(torch.stack(columns, dim=1))
        elif spec["key"] == "numeric":
            tensors.append(torch.randn(rows, spec["shape"][1], generator=generator))
        else:
            ids = torch.randint(0, cardinality[spec["vocabulary_of"]], (rows, spec["shape"][1]), generator=generator)
            lengths = torch.randint(0, spec["shape"][1] + 1, (rows, 1), generator=generator)  # empty histories too
            tensors.append(torch.where(torch.arange(spec["shape"][1]) < lengths, ids, 0))
    return tuple(tensors)


def _reason(error: BaseException) -> str:
    """A one-line reason from an exporter's (often very long) error message."""
    text = str(error)
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else type(error).__name__
    return (line[:300] + " …") if len(line) > 300 else line


def _require(module: str, format: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ExportError(f"{format} export needs the {module!r} package: pip install 'mtlkit[export]'")


def _export_torchscript(module: ServingModule, example: tuple[Tensor, ...], path: Path) -> None:
    # TorchScript is deprecated in favour of torch.export but is still what C++/mobile runtimes load;
    # TracerWarnings about Python constants (calibration offsets) are expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _export_onnx(module: ServingModule, example: tuple[Tensor, ...], path: Path, inputs: Sequence[str], outputs: Sequence[str], opset: int | None) -> None:
    for name in ("onnx", "onnxscript"):
        _require(name, "ONNX")
    batch = torch.export.Dim("batch")
    # The forward takes *tensors: its dynamic shapes are one tuple, one dict per tensor.
    dynamic_shapes = (tuple({0: batch} for _ in example),)
    # The exporter logs a warning per torchvision op it cannot register; none is used here.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(path), dynamo=True, input_names=list(inputs), output_names=list(outputs),
                              dynamic_shapes=dynamic_shapes, opset_version=opset, external_data=False, verbose=False)
    finally:
        registration.setLevel(level)


class _Runner:
    """Runs an exported artifact on numpy inputs (by name) → numpy outputs (in manifest order)."""

    def __init__(self, artifact: Path, format: str, input_names: Sequence[str], threads: int | None = None) -> None:
        self.format, self.input_names = format, list(input_names)
        if format == "onnx":
            _require("onnxruntime", "running an ONNX")
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if threads is not None:  # ONNX only: a TorchScript model uses torch.set_num_threads (the caller sets it)
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = threads
            self.session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(artifact), map_location="cpu").eval()

    def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.format == "onnx":
            return list(self.session.run(None, {n: inputs[n] for n in self.input_names}))
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(inputs[n]) for n in self.input_names))
        return [t.numpy() for t in out]


def _max_violation(exported: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> tuple[float, float]:
    """(largest |difference|, largest |difference| / allowed) over all outputs."""
    worst_abs, worst_ratio = 0.0, 0.0
    for got, want in zip(exported, reference):
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        allowed = ATOL + RTOL * np.abs(want.astype(np.float64))
        if diff.size:
            worst_abs = max(worst_abs, float(np.nanmax(diff)))
            worst_ratio = max(worst_ratio, float(np.nanmax(diff / allowed)))
        if np.isnan(got).sum() != np.isnan(want).sum():
            worst_ratio = math.inf
    return worst_abs, worst_ratio


def export_run(
    run_dir: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    verify: bool = True,
    opset: int | None = None,
) -> ExportResult:
    """Export the best model of ``run_dir``; write ``model.{pt,onnx}``, ``schema.json``, ``manifest.json`` to ``out``.

    ``out`` defaults to ``RUN_DIR/export/<format>``. With ``verify`` (the default) the artifact is
    loaded back and compared with PyTorch on random encoded rows; a mismatch raises ExportError.
    Files are written under temporary names first, so a failed export leaves ``out`` as it was.
    """
    from mtlkit import __version__
    from mtlkit.run import load_run

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    from mtlkit.config import is_nlp_run

    if is_nlp_run(run_dir):  # texts in: the encoder and every head in one ONNX graph
        from mtlkit.nlp.export import export_nlp_run

        return export_nlp_run(run_dir, format, out, verify, opset)
    run = load_run(run_dir)
    _check_exportable(run.model, run.schema, run_dir)
    out = Path(out) if out is not None else run_dir / "export" / format
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    inputs = input_specs(run.schema)
    outputs = output_specs(run.tasks, run.model.fusion)
    module = ServingModule(run.model, run.tasks, [s["key"] for s in inputs], len(run.schema.bias)).eval()
    example = example_inputs(run.schema, inputs, rows=8)
    artifact = out / ARTIFACT[format]
    tmp = out / f".{artifact.name}.tmp"
    backbone = run.config.model.backbone
    try:
        with torch.no_grad():
            if format == "onnx":
                _export_onnx(module, example, tmp, [s["name"] for s in inputs], [s["name"] for s in outputs], opset)
            else:
                _export_torchscript(module, example, tmp)
    except ExportError:
        raise
    except Exception as error:  # exporters raise many types; the user needs the reason in one line
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{run_dir}: the {backbone} model cannot be exported to {format}: {_reason(error)}") from error

    verification: dict[str, Any] = {"checked": False, "atol": ATOL, "rtol": RTOL,
                                    "rule": "|exported - pytorch| <= atol + rtol * |pytorch|"}
    if verify:
        check = example_inputs(run.schema, inputs, rows=VERIFY_ROWS, seed=1)
        with torch.no_grad():
            reference = [t.numpy() for t in module(*check)]
        try:
            got = _Runner(tmp, format, [s["name"] for s in inputs])({s["name"]: t.numpy() for s, t in zip(inputs, check)})
        except ExportError:
            tmp.unlink(missing_ok=True)
            raise
        except Exception as error:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"{run_dir}: the exported {format} model does not run: {_reason(error)}") from error
        worst_abs, ratio = _max_violation(got, reference)
        if ratio > 1.0:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"{run_dir}: the exported {format} model differs from PyTorch by up to {worst_abs:.3g} "
                              f"(allowed {ATOL:g} + {RTOL:g}·|value|); not written")
        verification.update(checked=True, rows=VERIFY_ROWS, max_abs_diff=worst_abs)

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "format": format,
        "artifact": artifact.name,
        "schema": "schema.json",
        "run_dir": str(run_dir.resolve()),
        "backbone": backbone,
        "mtlkit_version": __version__,
        "torch_version": torch.__version__,
        "inputs": inputs,
        "outputs": outputs,
        "bias_features": {"features": [f.name for f in run.schema.bias],
                          "note": "not graph inputs: serving treats them as missing (id 0), as mtlkit predict does"},
        "verification": verification,
    }
    if format == "onnx":
        import onnx

        manifest["opset"] = next((o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), None)
    os.replace(tmp, artifact)
    schema_tmp = out / ".schema.json.tmp"
    shutil.copyfile(run_dir / "schema.json", schema_tmp)
    os.replace(schema_tmp, out / "schema.json")
    manifest_tmp = out / f".{MANIFEST}.tmp"
    manifest_tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(manifest_tmp, out / MANIFEST)
    return ExportResult(out, artifact, manifest)


# -- running an export on raw rows ------------------------------------------------------------------


class ExportedModel:
    """An export directory loaded back: raw Arrow rows → the columns of :func:`mtlkit.run.predict_table`.

    The manifest is checked first (:func:`mtlkit.export_manifest.read_manifest`): a broken or
    hostile export is a one-line ConfigError, and no file outside the directory is read.
    """

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        directory = Path(directory)
        self.manifest: dict[str, Any] = read_manifest(directory)
        schema_path = directory / self.manifest["schema"]
        try:
            self.schema = FittedSchema.load(schema_path)
        except (MtlkitError, ValueError, KeyError, TypeError, RecursionError) as error:
            raise ConfigError(f"{schema_path}: not a fitted mtlkit schema ({_reason(error)}); re-export the run") from None
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        artifact = directory / self.manifest["artifact"]
        try:
            self._run = _Runner(artifact, self.manifest["format"], [s["name"] for s in self.inputs], threads)
        except ExportError:
            raise
        except Exception as error:  # onnxruntime and torch.jit raise many types for a broken file
            raise ConfigError(f"{artifact}: cannot be loaded as {self.manifest['format']} ({_reason(error)}); re-export the run") from None

    def encode(self, table: pa.Table, source: str = "data") -> dict[str, np.ndarray]:
        """The graph's inputs for ``table``, by input name (the schema's encoding, bias left out)."""
        encoded = self.schema.encode(table, [], source, with_targets=False)
        return {s["name"]: encoded.inputs[s["key"]].numpy() for s in self.inputs}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encoded inputs by name → outputs by name."""
        return {spec["name"]: value for spec, value in zip(self.outputs, self._run(inputs))}

    def predict_encoded(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encoded inputs by name → the columns of :meth:`predict_table`."""
        columns: dict[str, np.ndarray] = {}
        for spec, value in zip(self.outputs, self._run(inputs)):
            if spec.get("kind") == TaskKind.MULTICLASS.value:
                columns[spec["name"]] = value.argmax(axis=1)
                for c in range(value.shape[1]):
                    columns[f"{spec['name']}_p{c}"] = value[:, c]
            else:
                columns[spec["name"]] = value
        return columns

    def predict_table(self, table: pa.Table, source: str = "data") -> dict[str, np.ndarray]:
        """Like :func:`mtlkit.run.predict_table`: multiclass tasks give the class and ``<task>_p<c>`` columns."""
        return self.predict_encoded(self.encode(table, source))


def load_exported(directory: str | Path, threads: int | None = None) -> ExportedModel:
    """Load an export directory written by :func:`export_run` (``threads``: onnxruntime's intra-op threads)."""
    return ExportedModel(directory, threads)


__all__ = ["ExportError", "ExportResult", "ExportedModel", "ServingModule", "export_run", "input_specs", "load_exported", "output_specs"]
