"""Write checkpoints atomically; load them (``best.pt``, ``last.pt``) safely, with a one-line error when damaged.

``last.pt`` holds what an exact resume needs (:data:`CHECKPOINT_VERSION` 1): the model, optimiser,
scheduler, balancer and gradient-scaler states, the RNG states, the position (epoch, step, the
selection state and history) and a mid-epoch checkpoint's running loss sums. ``best.pt`` holds the
best weights (``model``), the best epoch per selection unit and their validation results.

Every checkpoint is read with ``weights_only=True``: a pickle that would run code (``os.system``)
or build arbitrary objects is refused by torch, and here reported as such, not as a traceback.
A truncated or garbled file (a crash mid-copy, a full disk) is reported with what to do:
``recover`` says it (e.g. "pass --overwrite to train the run again").

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "best.pt"
    >>> _ = path.write_bytes(b"PK\\x03\\x04 not really a zip")
    >>> load_checkpoint(path, recover="train the run again with --overwrite")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: ...best.pt: damaged or truncated checkpoint (...); train the run again with --overwrite
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from mtlkit.errors import ConfigError

CHECKPOINT_VERSION = 1


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file then rename, so a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", recover: str | None = None, keys: tuple[str, ...] = ("model",)) -> dict:
    """``torch.load(path, weights_only=True)``, checked to be a mapping holding ``keys``."""
    path = Path(path)
    hint = f"; {recover}" if recover else ""
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint{hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses globals it does not allow: code (os.system, eval) or foreign classes
        culprit = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
        if "Weights only load failed" in str(error) and culprit:
            raise ConfigError(f"{path}: refused: the file holds Python objects, not just tensors ({culprit[:120]}); "
                              f"mtlkit loads only weights, so it is not an mtlkit checkpoint or it was tampered with{hint}") from None
        raise ConfigError(f"{path}: damaged or truncated checkpoint ({_first_line(error)}){hint}") from None
    except Exception as error:  # torch raises many types for a bad file (RuntimeError, EOFError, IndexError, …)
        raise ConfigError(f"{path}: damaged or truncated checkpoint ({_first_line(error)}){hint}") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"{path}: not an mtlkit checkpoint (no {missing[0]!r} entry){hint}")
    return state


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0].split(". ")[0][:160] if text else ""
    return line.rstrip(".") or type(error).__name__


__all__ = ["CHECKPOINT_VERSION", "atomic_save", "load_checkpoint"]
