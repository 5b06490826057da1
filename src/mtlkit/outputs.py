"""Every file mtlkit writes goes through here: checked before the work, written atomically.

:func:`check_output_file` / :func:`check_output_dir` run before any work starts (``predict``,
``evaluate --json``, ``train --out``): a path that is a directory, lies under a file, cannot be
written, or is one of the inputs, is a ConfigError naming the option and the path, and nothing
is created. :func:`atomic_output` then writes through a temporary file next to the destination
and renames it over the destination at the end, so a failure (or a kill) never leaves a
half-written file, and never a ``*.tmp``: it is removed on any error.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> write_text(root / "out" / "a.json", "{}")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['a.json']
    >>> check_output_file(root / "out", "--json")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: --json .../out: is a directory, expected a file path
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from mtlkit.errors import ConfigError


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (``path`` is made absolute first)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_dir(directory: Path, option: str, target: Path) -> None:
    """The nearest existing ancestor of ``directory`` must be a directory we can create files in."""
    existing = _first_existing(directory)
    if not existing.is_dir():
        raise ConfigError(f"{option} {target}: {existing} is a file, not a directory")
    try:  # os.access says yes to root on a read-only mount: try it
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".mtlkit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{option} {target}: cannot write in {existing}: {error.strerror or error}") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(path: str | Path, option: str = "--out", inputs: Sequence[str | Path] = (),
                      run_dir: str | Path | None = None, run_files: Sequence[str] = ()) -> Path:
    """Fail now, before any work, if ``path`` cannot receive a file, or would replace one of ``inputs``
    or one of ``run_files`` in ``run_dir``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory, expected a file path")
    for source in inputs:
        if _same_file(path, Path(source)) or Path(os.path.abspath(path)) == Path(os.path.abspath(source)):
            raise ConfigError(f"{option} {path}: is the input file {source}; writing there would replace it: choose another path")
    if run_dir is not None and path.name in run_files and _same_file(path.parent, Path(run_dir)):
        raise ConfigError(f"{option} {path}: is the run's own {path.name}; writing there would replace it: choose another path")
    _check_writable_dir(path.parent, option, path)
    return path


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Fail now if ``path`` exists as a file, or could not be created as a directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file, expected a directory")
    _check_writable_dir(path, option, path)
    return path


def make_dirs(directory: Path, option: str = "--out") -> list[Path]:
    """``mkdir -p``; returns the directories it created (outermost first), to remove on failure."""
    missing = []
    probe = Path(os.path.abspath(directory))
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{option} {directory}: cannot create the directory: {error.strerror or error}") from None
    return missing[::-1]


def temporary_name(path: Path) -> Path:
    """Where :func:`atomic_output` writes first: hidden, next to ``path``, ending in ``.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_output(path: str | Path, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds it replaces ``path``, else it is removed.

    Directories created for ``path`` are removed again on failure. An OSError while writing
    (disk full, permissions) becomes a ConfigError naming ``path``.
    """
    path = Path(path)
    created = make_dirs(path.parent, option)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(error, OSError):
            raise ConfigError(f"{option} {path}: cannot write: {error.strerror or error}") from None
        raise


def write_text(path: str | Path, text: str, option: str = "--out") -> None:
    """Write UTF-8 text atomically (see :func:`atomic_output`)."""
    with atomic_output(path, option) as tmp:
        tmp.write_text(text, encoding="utf-8")


__all__ = ["atomic_output", "check_output_dir", "check_output_file", "make_dirs", "temporary_name", "write_text"]
