"""Reading an export's ``manifest.json`` without trusting it.

An export directory travels (copied, unpacked, mounted), so its manifest is input like any
other: :func:`read_manifest` checks it is JSON, holds every key the loader reads with the
right type, and that the files it names (``artifact``, ``schema``) are files *inside* the
export directory — no absolute paths, no ``..``, no symbolic link leading out. Every problem
is one :class:`~mtlkit.errors.ConfigError` line naming the file and the key.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> directory = Path(tempfile.mkdtemp())
    >>> _ = (directory / MANIFEST).write_text(json.dumps({"manifest_version": 1, "format": "onnx", "artifact": "../../etc/passwd"}))
    >>> read_manifest(directory)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: .../manifest.json: 'artifact' must name a file inside the export directory, got '../../etc/passwd'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.tasks import TaskKind

FORMATS: tuple[str, ...] = ("torchscript", "onnx")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
KINDS = tuple(kind.value for kind in TaskKind)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The checked manifest of the export in ``directory``; ConfigError naming the file and key otherwise."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{directory}: not an mtlkit export (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; re-export the run with `mtlkit export`") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested too deeply); re-export the run with `mtlkit export`") from None
    except ValueError as error:  # JSONDecodeError, or an integer of more than 4,300 digits
        raise ConfigError(f"{path}: not valid JSON ({error}); re-export the run with `mtlkit export`") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path}: must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ConfigError(f"{path}: unsupported manifest version {manifest.get('manifest_version')!r}")
    if manifest.get("run_kind", "tabular") == "nlp":
        return _text_manifest(directory, manifest, path)
    if _get(manifest, "format", str, path) not in FORMATS:
        raise ConfigError(f"{path}: 'format' must be one of {', '.join(FORMATS)}, got {manifest['format']!r}")
    for key in ("artifact", "schema"):
        _inside(directory, _get(manifest, key, str, path), key, path)
    for key in ("run_dir", "backbone"):
        if key in manifest and not isinstance(manifest[key], str):
            raise ConfigError(f"{path}: {key!r} must be a string, got {type(manifest[key]).__name__}")
    inputs = _get(manifest, "inputs", list, path)
    if not inputs:
        raise ConfigError(f"{path}: 'inputs' is empty")
    for i, spec in enumerate(inputs):
        _entry(spec, f"inputs[{i}]", {"name": str, "key": str}, path)
    outputs = _get(manifest, "outputs", list, path)
    if not outputs:
        raise ConfigError(f"{path}: 'outputs' is empty")
    for i, spec in enumerate(outputs):
        _output(spec, f"outputs[{i}]", path)
    return manifest


def _text_manifest(directory: Path, manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """An NLP export's manifest (:mod:`mtlkit.nlp.export`): ONNX, a tokenizer folder, inputs, outputs and task definitions."""
    if _get(manifest, "format", str, path) != "onnx":
        raise ConfigError(f"{path}: 'format' of an NLP export must be 'onnx', got {manifest['format']!r}")
    _inside(directory, _get(manifest, "artifact", str, path), "artifact", path)
    tokenizer = _get(manifest, "tokenizer", str, path)
    escapes = not tokenizer or PurePosixPath(tokenizer).is_absolute() or ".." in PurePosixPath(tokenizer.replace("\\", "/")).parts
    if escapes or not (directory / tokenizer).resolve().is_relative_to(directory.resolve()) or not (directory / tokenizer).is_dir():
        raise ConfigError(f"{path}: 'tokenizer' must name a folder inside the export directory, got {tokenizer!r}")
    for key in ("run_dir", "backbone", "encoder"):
        if key in manifest and not isinstance(manifest[key], str):
            raise ConfigError(f"{path}: {key!r} must be a string, got {type(manifest[key]).__name__}")
    for key, fields in (("inputs", {"name": str, "key": str, "dtype": str, "axes": list}), ("outputs", {"name": str, "kind": str}),
                        ("tasks", {"kind": str, "definition": dict})):
        entries = _get(manifest, key, list, path)
        if not entries:
            raise ConfigError(f"{path}: {key!r} is empty")
        for i, spec in enumerate(entries):
            _entry(spec, f"{key}[{i}]", fields, path)
    return manifest


def _get(manifest: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    if key not in manifest:
        raise ConfigError(f"{path}: missing key {key!r}; re-export the run with `mtlkit export`")
    if not isinstance(manifest[key], kind):
        raise ConfigError(f"{path}: {key!r} must be a {_name(kind)}, got {type(manifest[key]).__name__}")
    return manifest[key]


def _name(kind: type) -> str:
    return {str: "string", list: "list", dict: "object", int: "integer"}.get(kind, kind.__name__)


def _entry(spec: Any, where: str, keys: Mapping[str, type], path: Path) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: {where} must be an object, got {type(spec).__name__}")
    for key, kind in keys.items():
        if not isinstance(spec.get(key), kind) or isinstance(spec.get(key), bool):
            raise ConfigError(f"{path}: {where} needs {key!r} ({_name(kind)})")
    return spec


def _output(spec: Any, where: str, path: Path) -> None:
    """A task output (``task``, ``kind``, what its kind reads) or the fused score (``weights``, ``offsets``)."""
    _entry(spec, where, {"name": str, "kind": str}, path)
    if "task" not in spec:  # the fused score
        _entry(spec, where, {"weights": dict, "offsets": dict}, path)
        return
    if spec["kind"] not in KINDS:
        raise ConfigError(f"{path}: {where}: 'kind' must be one of {', '.join(KINDS)}, got {spec['kind']!r}")
    if spec["kind"] == TaskKind.BINARY.value:
        _entry(spec, where, {"output": str}, path)
    elif spec["kind"] == TaskKind.MULTICLASS.value:
        shape = spec.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) and not isinstance(shape[1], bool) and shape[1] >= 2):
            raise ConfigError(f"{path}: {where} needs 'shape' [\"batch\", classes] with at least 2 classes, got {shape!r}")


def _inside(directory: Path, name: str, key: str, path: Path) -> Path:
    """``directory / name`` if it is a file inside ``directory`` (after resolving links); ConfigError otherwise."""
    escapes = (not name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
               or ".." in PurePosixPath(name.replace("\\", "/")).parts)
    target = directory / name
    if escapes or not target.resolve().is_relative_to(directory.resolve()):
        raise ConfigError(f"{path}: {key!r} must name a file inside the export directory, got {name!r}")
    if not target.is_file():
        raise ConfigError(f"{path}: {key!r} names {name!r}, which is not a file in {directory}")
    return target


__all__ = ["FORMATS", "MANIFEST", "MANIFEST_VERSION", "read_manifest"]
