"""Serving an NLP run: texts in, every requested task's answer out, one encoder pass per batch.

A ``/predict`` body is ``{"task": name, "inputs": [...]}`` (one task: its records, each with
``"task"``, exactly as ``mtlkit predict`` writes them), ``{"tasks": [a, b], "inputs": [...]}``
or ``{"inputs": [...]}`` (every task whose input is one plain text: classification, regression,
tagging, span NER trained on single texts); those answer ``{"predictions": [{a: record, b: record}, ...]}``
per input. Each kind reads its inputs with :meth:`~mtlkit.nlp.base.NLPTask.example_from_json`
(a string, a text pair, ``{"question", "context"}``, ``{"tokens", "entities"}``, …) and
answers with its ``predict_records`` — label and probabilities, value, tags per word, answer
text, entities, relations.

:func:`parse_text_request` checks a body (400/413/422 with the input and task at fault),
tokenizes on the server, and refuses an input longer than the task's ``max_length`` with a 413
(``input_problems``: the service never truncates silently; a QA context may span windows up to
:data:`~mtlkit.nlp.kinds.span_qa.MAX_WINDOWS`). :func:`run_text_batch` answers several requests
at once (micro-batching, :mod:`mtlkit.serve.batching`): each task featurizes the inputs of every
request that asks for it in one call, tasks whose token tensors come out identical (same texts,
same tokenization) share **one** encoder forward pass, and the records are split back per
request. A merged batch that fails is retried request by request, so one bad request never
fails its batch-mates.

:class:`TextModel` is the model behind it: a run's PyTorch model (:func:`run_text_model`) or an
ONNX export run by onnxruntime (:func:`mtlkit.nlp.export.load_text_export`); both take the
featurized inputs and the task names and return each task's head outputs as tensors.

Example (needs a trained NLP run)::

    model = run_text_model("runs/glue")
    request = parse_text_request(b'{"task": "sst2", "inputs": ["a fine film"]}', model, max_batch=64)
    run_text_batch(model, [request])   # [b'{"predictions": [{"task": "sst2", "label": "1", "probabilities": {...}}]}']
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.nlp.base import NLPTask
from mtlkit.nlp.featurize import TEXT_INPUTS
from mtlkit.nlp.json_inputs import InputError, json_type
from mtlkit.serve.body import parse_json
from mtlkit.serve.predictor import changed_files_problem, file_stamp
from mtlkit.serve.rows import RequestError

log = logging.getLogger("mtlkit.serve")
SHAPE = '{"task": name, "inputs": [...]} (or "tasks": [names], or no task: every single-text task)'
FEATURIZE_ERRORS = (MtlkitError, ValueError, IndexError, KeyError, TypeError)
Forward = Callable[[dict[str, Tensor], list[str]], dict[str, Any]]
# What one input of each kind is, for /schema.
INPUT_FORMS = {
    "classification": 'a text, or a pair {"text": ..., "text_pair": ...} / [text, text_pair]',
    "domain": 'a text, or a pair {"text": ..., "text_pair": ...} / [text, text_pair]',
    "regression": 'a text, or a pair {"text": ..., "text_pair": ...} / [text, text_pair]',
    "tagging": 'a sentence (split on whitespace) or {"tokens": [word, ...]}',
    "span_ner": 'a sentence (split on whitespace) or {"tokens": [word, ...]}',
    "span_qa": '{"question": ..., "context": ..., "id": optional}',
    "relation": '{"tokens": [word, ...], "entities": [{"start": i, "end": j, "type": t}, ...]}',
    "ranking": '{"query": ..., "candidates": [text, ...]}',
}


@dataclass
class TextModel:
    """A served NLP model: its tasks with something to predict, the tokenizer, and ``forward(inputs, names)``."""

    backend: str  # "pytorch" | "onnx"
    directory: Path
    tasks: dict[str, NLPTask]
    tokenizer: Any = field(repr=False)
    encoder: str
    forward: Forward = field(repr=False)
    files: list[Path] = field(default_factory=list)
    run_dir: str | None = None
    stamps: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.stamps = {path: file_stamp(path) for path in self.files}

    @property
    def single_text_tasks(self) -> list[str]:
        return [name for name, task in self.tasks.items() if task.single_text]

    def files_problem(self, show_paths: bool = False) -> str | None:
        """Why the files the model was loaded from are no longer what was loaded (gone or replaced), or None."""
        return changed_files_problem(self.stamps, show_paths)

    def describe(self, name: str) -> dict[str, Any]:
        """A task as ``/schema`` lists it."""
        task = self.tasks[name]
        entry: dict[str, Any] = {"name": name, "kind": task.kind, "input": INPUT_FORMS.get(task.kind, "see the kind's documentation"),
                                 "single_text": task.single_text, "max_length": task.max_length}
        for key in ("labels", "pairs", "candidates", "max_question_length"):
            value = getattr(task, key, None)
            if value is not None:
                entry[key] = value
        return entry


@dataclass(frozen=True)
class TextRequest:
    """One checked request: its inputs as each asked task's examples (``named``: one ``task`` was given)."""

    num_rows: int
    tasks: tuple[str, ...]
    examples: dict[str, list[Any]]
    named: bool


# -- a request ----------------------------------------------------------------------------------


def _task_names(payload: dict[str, Any], model: TextModel) -> tuple[tuple[str, ...], bool]:
    choices = ", ".join(model.tasks)
    if "task" in payload and "tasks" in payload:
        raise RequestError(422, 'give "task" (one) or "tasks" (several), not both')
    if "task" in payload:
        names: Any = [payload["task"]]
        if not isinstance(payload["task"], str):
            raise RequestError(422, f'"task" must be a task name (string), got {json_type(payload["task"])}; choose one of: {choices}')
    elif "tasks" in payload:
        names = payload["tasks"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise RequestError(422, f'"tasks" must be a non-empty list of task names; choose from: {choices}')
        if len(set(names)) != len(names):
            raise RequestError(422, '"tasks" names a task twice')
    else:
        names = model.single_text_tasks
        if not names:
            raise RequestError(422, f'no task of this model takes a single text: name one with "task" ({choices})')
    for name in names:
        if name not in model.tasks:
            raise RequestError(422, f"no task {name!r} in this model; choose one of: {choices}")
    return tuple(names), "task" in payload


def parse_text_request(body: bytes, model: TextModel, max_batch: int) -> TextRequest:
    """The checked request of ``body``; RequestError 400 (not JSON), 413 (too many or too long inputs) or 422."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise RequestError(422, f"the body must be a JSON object {SHAPE}")
    unknown = sorted(set(payload) - {"task", "tasks", "inputs"})
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(map(repr, unknown))}: send {SHAPE}")
    if "inputs" not in payload:
        raise RequestError(422, f'missing "inputs": send {SHAPE}')
    inputs = payload["inputs"]
    if not isinstance(inputs, list):
        raise RequestError(422, f'"inputs" must be a list, got {json_type(inputs)}')
    if not inputs:
        raise RequestError(422, '"inputs" is empty: send at least one input')
    if len(inputs) > max_batch:
        raise RequestError(413, f"{len(inputs)} inputs exceed the batch limit of {max_batch}: split the request")
    names, named = _task_names(payload, model)
    examples: dict[str, list[Any]] = {}
    for name in names:
        task = model.tasks[name]
        which = f" (task {name!r})" if len(names) > 1 else ""
        rows = []
        for i, value in enumerate(inputs):
            try:
                rows.append(task.example_from_json(value))
            except InputError as error:
                raise RequestError(422, f"inputs[{i}]{which}: {error}") from None
        try:
            problems = task.input_problems(rows, model.tokenizer)
        except FEATURIZE_ERRORS as error:
            raise RequestError(422, f"the inputs{which} cannot be tokenized: {error}") from None
        if problems:
            i = min(problems)
            raise RequestError(413, f"inputs[{i}]{which}: {problems[i]}")
        examples[name] = rows
    return TextRequest(len(inputs), names, examples, named)


# -- a batch of requests ------------------------------------------------------------------------


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def _share_groups(tables: dict[str, Any]) -> list[tuple[list[str], dict[str, Tensor]]]:
    """Tasks whose inputs agree (same token tensors, no conflicting extra input) share one forward pass."""
    groups: list[tuple[list[str], dict[str, Tensor]]] = []
    for name, table in tables.items():
        if len(table) == 0:
            continue
        for members, inputs in groups:
            text_keys = [k for k in TEXT_INPUTS if k in inputs or k in table.inputs]
            if all(k in inputs and k in table.inputs and _same(inputs[k], table.inputs[k]) for k in text_keys) and \
                    all(_same(inputs[k], v) for k, v in table.inputs.items() if k in inputs and k not in TEXT_INPUTS):
                members.append(name)
                inputs.update(table.inputs)
                break
        else:
            groups.append(([name], dict(table.inputs)))
    return groups


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: non-finite numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(body), allow_nan=False).encode()


def answer_requests(model: TextModel, requests: Sequence[TextRequest]) -> list[bytes]:
    """Every request's 200 body: one featurization per task, one forward pass per group of agreeing tasks."""
    tables, examples, offsets = {}, {}, {}
    for name, task in model.tasks.items():
        asking = [k for k, r in enumerate(requests) if name in r.tasks]
        if not asking:
            continue
        examples[name] = [x for k in asking for x in requests[k].examples[name]]
        tables[name] = task.featurize(examples[name], model.tokenizer)
        offsets[name] = dict(zip(asking, [0] + torch.tensor([requests[k].num_rows for k in asking]).cumsum(0).tolist()))
    outputs: dict[str, Any] = {}
    for members, inputs in _share_groups(tables):
        outputs.update(model.forward(inputs, members))
    records = {name: model.tasks[name].predict_records(outputs.get(name), tables[name], examples[name]) for name in tables}
    bodies = []
    for k, request in enumerate(requests):
        mine = {name: records[name][offsets[name][k]: offsets[name][k] + request.num_rows] for name in request.tasks}
        if request.named:
            (name,) = request.tasks
            predictions = [{"task": name, **record} for record in mine[name]]
        else:
            predictions = [{name: mine[name][i] for name in request.tasks} for i in range(request.num_rows)]
        bodies.append(_dumps({"predictions": predictions}))
    return bodies


def run_text_batch(model: TextModel, requests: Sequence[TextRequest]) -> list[bytes | RequestError]:
    """Each request's JSON answer or error, in order; a failed merged batch is retried request by request."""
    try:
        return list(answer_requests(model, requests))
    except Exception as error:
        if len(requests) > 1:
            log.warning("a merged batch failed (%s): answering its requests one by one", type(error).__name__)
            return [run_text_batch(model, [request])[0] for request in requests]
        if isinstance(error, FEATURIZE_ERRORS) and not isinstance(error, ConfigError):
            return [RequestError(422, f"the inputs cannot be featurized: {str(error).splitlines()[0] if str(error) else type(error).__name__}")]
        log.exception("the model failed on a request")
        return [RequestError(500, f"internal error while running the model ({type(error).__name__})")]


# -- loading ------------------------------------------------------------------------------------


def run_text_model(run_dir: str | Path) -> TextModel:
    """The best model of a trained NLP run, in PyTorch (``torch.inference_mode``)."""
    from mtlkit.nlp.encoder import load_tokenizer
    from mtlkit.nlp.run import load_nlp_config, load_nlp_model

    run_dir = Path(run_dir)
    config = load_nlp_config(run_dir)
    tokenizer = load_tokenizer(config.encoder)
    model = load_nlp_model(run_dir, config)
    tasks = {e.task.name: e.task for e in config.tasks if not e.task.auxiliary}
    if not tasks:
        raise ConfigError(f"{run_dir}: the run has no task with predictions to serve")

    def forward(inputs: dict[str, Tensor], names: list[str]) -> dict[str, Any]:
        with torch.inference_mode():
            return model(inputs, names)

    files = [run_dir / "config.yaml", run_dir / "best.pt"]
    return TextModel("pytorch", run_dir, tasks, tokenizer, config.encoder.name, forward, files, str(run_dir.resolve()))


def is_text_directory(directory: str | Path) -> bool:
    """Whether ``directory`` is an NLP run or the export of one (served by this module)."""
    from mtlkit.config import is_nlp_run
    from mtlkit.export_manifest import MANIFEST

    directory = Path(directory)
    manifest = directory / MANIFEST
    if manifest.is_file():
        try:
            return json.loads(manifest.read_bytes()).get("run_kind") == "nlp"
        except (ValueError, AttributeError, RecursionError):
            return False  # read_manifest reports it
    return is_nlp_run(directory)


def load_text_model(directory: str | Path, threads: int | None = None) -> TextModel:
    """An NLP run or its ONNX export, smoke-tested: a model that cannot run fails here, not per request."""
    from mtlkit.export_manifest import MANIFEST

    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        from mtlkit.nlp.export import load_text_export

        model = load_text_export(directory, threads)
    else:
        model = run_text_model(directory)
    single = model.single_text_tasks
    if single:
        body = json.dumps({"tasks": single, "inputs": ["hello world"]}).encode()
        try:
            outcome = run_text_batch(model, [parse_text_request(body, model, 1)])[0]
        except RequestError as error:
            outcome = error
        if isinstance(outcome, RequestError):
            raise ConfigError(f"{directory}: the model does not run on a one-text request ({outcome.message[:300]})")
    return model


__all__ = ["INPUT_FORMS", "TextModel", "TextRequest", "answer_requests", "is_text_directory", "load_text_model",
           "parse_text_request", "run_text_batch", "run_text_model"]
