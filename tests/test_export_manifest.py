"""A broken or hostile export directory: one ConfigError line (CLI exit 2), and no file outside it is read.

An export manifest that was not JSON or lacked keys ended in a traceback, and its paths were
followed outside the export directory. Every case below starts from a good ONNX export, breaks
one thing, and runs ``mtlkit serve`` on it (uvicorn stubbed: nothing listens).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mtlkit.cli import app as cli
from mtlkit.errors import ConfigError
from mtlkit.export import export_run, load_exported

from serving_runs import shared_run


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    _, run_dir = shared_run(tmp_path_factory, "mmoe_sequence")
    return export_run(run_dir, "onnx", tmp_path_factory.mktemp("manifest") / "onnx").directory


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        manifest = json.loads((directory / "manifest.json").read_text())
        change(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))
    return apply


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda directory: (directory / name).write_bytes(content)


def _outside(key: str, name: str) -> Callable[[Path], None]:
    """The manifest's ``key`` names a real copy of the file, outside the export directory."""
    def apply(directory: Path) -> None:
        outside = directory.parent / "outside"
        outside.mkdir()
        shutil.copy(directory / ("model.onnx" if key == "artifact" else "schema.json"), outside / name)
        _edit(lambda m: m.update({key: f"../outside/{name}"}))(directory)
    return apply


def _symlink_out(directory: Path) -> None:
    target = directory.parent / "elsewhere.onnx"
    shutil.move(directory / "model.onnx", target)
    os.symlink(target, directory / "model.onnx")


M = "manifest.json"
CASES: dict[str, tuple[Callable[[Path], None], str]] = {  # name → (how the export is broken, what the one line says)
    "not JSON": (_write(M, b"{"), f"{M}: not valid JSON (Expecting property name"),
    "empty": (_write(M, b""), f"{M}: not valid JSON (Expecting value"),
    "not UTF-8": (_write(M, b"\xff\xfe\x00garbage"), f"{M}: not UTF-8 text"),
    "nested 100k deep": (_write(M, b"[" * 100_000), f"{M}: not valid JSON (nested too deeply)"),
    "a list": (_write(M, b"[1, 2]"), f"{M}: must be a JSON object, got list"),
    "version as a string": (_edit(lambda m: m.update(manifest_version="1")), f"{M}: unsupported manifest version '1'"),
    "no version": (_edit(lambda m: m.pop("manifest_version")), f"{M}: unsupported manifest version None"),
    **{f"no {key}": (_edit(lambda m, key=key: m.pop(key)), f"{M}: missing key {key!r}; re-export the run with `mtlkit export`")
       for key in ("format", "artifact", "schema", "inputs", "outputs")},
    "unknown format": (_edit(lambda m: m.update(format="tflite")), f"{M}: 'format' must be one of torchscript, onnx, got 'tflite'"),
    "format a number": (_edit(lambda m: m.update(format=1)), f"{M}: 'format' must be a string, got int"),
    "artifact ../../etc/passwd": (_edit(lambda m: m.update(artifact="../../../../etc/passwd")),
                                  f"{M}: 'artifact' must name a file inside the export directory, got '../../../../etc/passwd'"),
    "artifact absolute": (_edit(lambda m: m.update(artifact="/etc/passwd")),
                          f"{M}: 'artifact' must name a file inside the export directory, got '/etc/passwd'"),
    "artifact outside, a real model": (_outside("artifact", "model.onnx"),
                                       f"{M}: 'artifact' must name a file inside the export directory, got '../outside/model.onnx'"),
    "schema outside, a real schema": (_outside("schema", "schema.json"),
                                      f"{M}: 'schema' must name a file inside the export directory, got '../outside/schema.json'"),
    "artifact a link leading out": (_symlink_out, f"{M}: 'artifact' must name a file inside the export directory, got 'model.onnx'"),
    "artifact a Windows path": (_edit(lambda m: m.update(artifact="..\\..\\model.onnx")),
                                f"{M}: 'artifact' must name a file inside the export directory"),
    "artifact empty": (_edit(lambda m: m.update(artifact="")), f"{M}: 'artifact' must name a file inside the export directory, got ''"),
    "artifact missing": (_edit(lambda m: m.update(artifact="model2.onnx")), f"{M}: 'artifact' names 'model2.onnx', which is not a file in"),
    "artifact a directory": (lambda d: (d / "sub").mkdir() or _edit(lambda m: m.update(artifact="sub"))(d),
                             f"{M}: 'artifact' names 'sub', which is not a file in"),
    "inputs an object": (_edit(lambda m: m.update(inputs={})), f"{M}: 'inputs' must be a list, got dict"),
    "inputs empty": (_edit(lambda m: m.update(inputs=[])), f"{M}: 'inputs' is empty"),
    "input without a name": (_edit(lambda m: m["inputs"][0].pop("name")), f"{M}: inputs[0] needs 'name' (string)"),
    "input a number": (_edit(lambda m: m["inputs"].__setitem__(1, 3)), f"{M}: inputs[1] must be an object, got int"),
    "outputs empty": (_edit(lambda m: m.update(outputs=[])), f"{M}: 'outputs' is empty"),
    "output without a kind": (_edit(lambda m: m["outputs"][0].pop("kind")), f"{M}: outputs[0] needs 'kind' (string)"),
    "output of an unknown kind": (_edit(lambda m: m["outputs"][0].update(kind="ranking")),
                                  f"{M}: outputs[0]: 'kind' must be one of binary, regression, multiclass, got 'ranking'"),
    "binary output without its read-out": (_edit(lambda m: m["outputs"][0].pop("output")), f"{M}: outputs[0] needs 'output' (string)"),
    "multiclass output without a shape": (_edit(lambda m: m["outputs"][2].pop("shape")),
                                          f"{M}: outputs[2] needs 'shape' [\"batch\", classes] with at least 2 classes, got None"),
    "fused score without weights": (_edit(lambda m: m["outputs"][-1].pop("weights")), f"{M}: outputs[4] needs 'weights' (object)"),
    "garbage schema.json": (_write("schema.json", b"\x00garbage"), "schema.json: not a fitted mtlkit schema ("),
    "schema.json of another kind": (_write("schema.json", b'{"format_version": 1}'), "schema.json: not a fitted mtlkit schema ("),
    "truncated model": (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:500]),
                        "model.onnx: cannot be loaded as onnx ("),
    "inputs renamed": (_edit(lambda m: m["inputs"][0].update(name="cats")), "the model does not run on its schema's inputs ("),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_export_is_one_line(export, tmp_path, monkeypatch, case):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("a broken export was served"))
    directory = Path(shutil.copytree(export, tmp_path / "export"))
    breaks, message = CASES[case]
    breaks(directory)
    result = CliRunner().invoke(cli, ["serve", str(directory)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert message in output and "Traceback" not in result.output
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) <= 3  # one line, wrapped at most


def test_the_python_api_raises_config_error(export, tmp_path):
    directory = Path(shutil.copytree(export, tmp_path / "export"))
    _edit(lambda m: m.update(schema="/etc/hostname"))(directory)
    with pytest.raises(ConfigError, match="'schema' must name a file inside the export directory, got '/etc/hostname'"):
        load_exported(directory)


def test_a_good_export_still_loads(export):
    loaded = load_exported(export)
    assert loaded.manifest["format"] == "onnx" and [s["name"] for s in loaded.inputs][:2] == ["categorical", "numeric"]
