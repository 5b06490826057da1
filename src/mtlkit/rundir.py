"""The run directory's life: created with its ``config.yaml``, resumed, restarted, or refused.

A run directory is an mtlkit run from its first byte: it is created and ``config.yaml`` written
into it (atomically) before anything else, so whatever a kill leaves behind, the same command
knows what it is looking at (:func:`open_run_dir`):

- no directory, or an empty one, or one holding only our temporary files → a new run;
- ``summary.json`` → a finished run: refused unless ``--overwrite``;
- ``config.yaml`` of the same config (``train.progress``/``threads`` aside) and ``last.pt`` →
  resumed from it; without ``last.pt`` (killed in the first epoch) → restarted cleanly: the
  files mtlkit wrote there are removed, the user's own files kept;
- ``config.yaml`` of another config → refused, naming the first key that differs;
- anything else → "not an mtlkit run", refused unless ``--overwrite``.

:func:`removed_on_error` takes back a directory this call created when setting up the run
fails with bad input, so a refused run leaves nothing behind.

Example:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> open_run_dir(run, "seed: 0\\n").resume, sorted(p.name for p in run.iterdir())
    (False, ['config.yaml'])
    >>> open_run_dir(run, "seed: 0\\n").resume   # killed before the first checkpoint: restarted
    False
    >>> open_run_dir(run, "seed: 1\\n")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: ...run: holds an unfinished run of another config (key 'seed': 0 there, 1 now); ...
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.outputs import check_output_dir, make_dirs, write_text
from mtlkit.safe_yaml import load_yaml, read_yaml_file

CONFIG, SUMMARY, LAST = "config.yaml", "summary.json", "last.pt"
# Everything a run writes (the trainer, callbacks, diagnostics); removed when a run restarts.
WRITTEN = {CONFIG, SUMMARY, LAST, "schema.json", "best.pt", "metrics.jsonl", "metrics.csv", "test_metrics.json",
           "gates.csv", "gates.png", "gradients.csv", "gradients.png", "tensorboard", "calibration.json"}
# Keys that change how a run is shown, not what it computes: a resume may differ in them.
NOT_COMPARED = {("train", "progress"), ("train", "threads")}
OVERWRITE = "pass --overwrite to replace it"


@dataclass(frozen=True)
class RunDir:
    path: Path
    resume: bool  # last.pt is there: continue from it
    created: Path | None = None  # the outermost directory this call created (the run's, or a parent)


def _ours(entry: Path) -> bool:
    return entry.name in WRITTEN or entry.name.endswith(".tmp")


def _first_difference(old: Any, new: Any, key: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for name in [*old, *(k for k in new if k not in old)]:
            if tuple(f"{key}.{name}".lstrip(".").split(".")) in NOT_COMPARED:
                continue
            found = _first_difference(old.get(name), new.get(name), f"{key}.{name}".lstrip("."))
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return next((d for i, (a, b) in enumerate(zip(old, new)) if (d := _first_difference(a, b, f"{key}.{i}"))), None)
    return None if old == new else (key, old, new)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_same_config(path: Path, config_text: str) -> None:
    try:
        old = read_yaml_file(path / CONFIG)
    except ConfigError as error:
        raise ConfigError(f"{path}: holds an unfinished run whose config.yaml is damaged ({error}); {OVERWRITE}") from None
    difference = _first_difference(old, load_yaml(config_text, "the new config"))
    if difference:
        key, was, now = difference
        raise ConfigError(f"{path}: holds an unfinished run of another config (key {key!r}: {_short(was)} there, {_short(now)} now); "
                          f"{OVERWRITE}, or choose another --out")


def _clear(path: Path, everything: bool) -> None:
    for entry in path.iterdir():
        if everything or _ours(entry):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def open_run_dir(path: str | Path, config_text: str, overwrite: bool = False) -> RunDir:
    """Decide between a new, resumed or restarted run (module docstring); ``config.yaml`` is there after."""
    path = Path(path)
    check_output_dir(path)
    if not path.exists():
        created = make_dirs(path)[0]
        try:
            write_text(path / CONFIG, config_text)
        except BaseException:
            shutil.rmtree(created, ignore_errors=True)
            raise
        return RunDir(path, resume=False, created=created)
    entries = list(path.iterdir())
    if overwrite:
        _clear(path, everything=True)
    elif (path / SUMMARY).exists():
        raise ConfigError(f"{path}: already holds a finished run ({OVERWRITE})")
    elif (path / CONFIG).is_file():
        _check_same_config(path, config_text)
        if (path / LAST).exists():
            return RunDir(path, resume=True)
        _clear(path, everything=False)  # killed before its first checkpoint: start again
    elif not all(_ours(e) and e.name.endswith(".tmp") for e in entries):
        raise ConfigError(f"{path}: exists and is not an mtlkit run ({OVERWRITE})")
    else:
        _clear(path, everything=False)  # empty, or killed while writing config.yaml
    write_text(path / CONFIG, config_text)
    return RunDir(path, resume=False)


@contextlib.contextmanager
def removed_on_error(run: RunDir | None) -> Iterator[None]:
    """On bad input, remove the directory if this call created it and no checkpoint was written."""
    try:
        yield
    except MtlkitError:
        if run is not None and run.created is not None and not (run.path / LAST).exists():
            shutil.rmtree(run.created, ignore_errors=True)
        raise


__all__ = ["CONFIG", "LAST", "SUMMARY", "WRITTEN", "RunDir", "open_run_dir", "removed_on_error"]
