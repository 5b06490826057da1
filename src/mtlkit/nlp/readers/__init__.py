"""Data readers: one file in, a list of examples out; registered by format name in :data:`READERS`.

A reader is ``reader(path, **options) -> list[example]`` and raises
:class:`~mtlkit.errors.DataError` naming the file and line on malformed input. A run config
names it per task: ``data: {train: …, format: glue_tsv, options: {text: sentence}}``; the
options are the reader's keyword arguments. A new format is one module in this package with
``@READERS.register("name")``, or — without registering — a module ``<name>.py`` holding a
function ``read_<name>`` (``format: conll`` → :func:`mtlkit.nlp.readers.conll.read_conll`).
:func:`get_reader` imports every module here first.

Example:
    >>> sorted(set(names()) & {"glue_tsv", "sts", "mrpc", "ranking_tsv", "conll", "squad", "hf"})
    ['conll', 'glue_tsv', 'hf', 'mrpc', 'ranking_tsv', 'squad', 'sts']
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError
from mtlkit.registry import Registry

Reader = Callable[..., list[Any]]
READERS: Registry[Reader] = Registry("data format")
_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        function = getattr(module, f"read_{info.name}", None)
        if callable(function) and info.name not in READERS:  # the `<name>.py` / `read_<name>` convention
            READERS.register(info.name)(function)
    _loaded = True


def names() -> list[str]:
    _load_all()
    return READERS.names()


def get_reader(name: str) -> Reader:
    _load_all()
    return READERS.get(name)


def check_options(name: str, options: dict[str, Any], key: str = "options") -> None:
    """Fail before reading when ``options`` holds a key the reader does not take."""
    parameters = inspect.signature(get_reader(name)).parameters
    allowed = [p for p in list(parameters)[1:] if parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}: unknown option {unknown[0]!r} for format {name!r} (takes: {', '.join(allowed) or 'none'})")


def read(name: str, path: str | Path, options: dict[str, Any] | None = None) -> list[Any]:
    """Read ``path`` with format ``name``; a missing file or an empty result is a DataError."""
    from mtlkit.errors import DataError

    path = Path(path)
    reader = get_reader(name)
    if not getattr(reader, "reads_any_path", False):  # format hf also reads folders and hub:<name>
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_dir():
            raise DataError(f"{path}: is a directory, expected a {name} file")
    try:
        examples = reader(path, **(options or {}))
    except UnicodeDecodeError:  # readers decode as they go: find the first bad byte in the whole file
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise DataError(f"{path}: line {line}: bytes that are not UTF-8 text (byte {data[error.start]:#04x}); "
                            "save the file as UTF-8") from None
        raise
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples


__all__ = ["READERS", "Reader", "check_options", "get_reader", "names", "read"]
