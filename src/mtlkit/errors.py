"""Errors that reach the user as one clear line.

Every error raised for bad input derives from :class:`MtlkitError`; the CLI prints
``str(error)`` on one line and exits with code 2, with no traceback.
"""

from __future__ import annotations


class MtlkitError(Exception):
    """Base class for errors caused by the user's input (config, data, paths)."""


class ConfigError(MtlkitError):
    """A configuration key is unknown, missing or has an invalid value."""


class DataError(MtlkitError):
    """A data file is missing, empty, malformed, or holds values a task cannot use."""
