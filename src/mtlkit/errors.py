"""Errors that reach the user as one clear line.

Every error raised for bad input derives from :class:`MtlkitError`; the CLI prints
``str(error)`` on one line and exits with code 2, with no traceback.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class MtlkitError(Exception):
    """Base class for errors caused by the user's input (config, data, paths)."""


class ConfigError(MtlkitError):
    """A configuration key is unknown, missing or has an invalid value."""


class DataError(MtlkitError):
    """A data file is missing, empty, malformed, or holds values a task cannot use."""


def validation_error(error: ValidationError, source: str, prefix: str = "") -> ConfigError:
    """One line for pydantic's first error: the file, the key (under ``prefix``) and what is wrong with it.

    Example:
        >>> from pydantic import BaseModel
        >>> class Train(BaseModel):
        ...     lr: float
        >>> try:
        ...     Train(lr="fast")
        ... except ValidationError as error:
        ...     print(validation_error(error, "run.yaml", "train"))
        run.yaml: key 'train.lr': Input should be a valid number, unable to parse string as a number (got 'fast')
    """
    first = error.errors()[0]
    location = ".".join(p for p in (prefix, _location(first["loc"])) if p)
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    if first["type"] == "missing":
        message = "required key is missing"
    message = message.removeprefix("Value error, ")
    if first["type"] in ("literal_error", "enum") or first["type"].endswith(("_parsing", "_type")):
        shown = repr(first.get("input"))
        message = f"{message} (got {shown if len(shown) <= 60 else shown[:57] + '...'})"  # the value, for a choice or type mistake
    return ConfigError(f"{source}: {f'key {location!r}: ' if location else ''}{message}")


def _location(loc: tuple[Any, ...]) -> str:
    # Pydantic inserts validator-only segments (e.g. 'function-after[...]'); users never wrote them.
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-", "tagged-union[")))
