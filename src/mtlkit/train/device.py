"""``train.device``: parse it, check that this machine has it, and say what it has when not.

``auto`` is CUDA when available, else the CPU. ``cuda`` / ``cuda:N`` / ``mps`` must exist here: a
CPU build of torch would otherwise fail deep inside ``model.to`` with an AssertionError.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("banana")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: train.device: 'banana' is not a device; use auto, cpu, cuda, cuda:N or mps
"""

from __future__ import annotations

import re

import torch

from mtlkit.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def available_devices() -> list[str]:
    """What this machine and this build of torch can train on."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device_name(name: str) -> str:
    """Syntax only (config validation: no device is queried)."""
    if not DEVICE_PATTERN.match(name):
        raise ValueError(f"{name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    return name


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The torch device for ``name``; a ConfigError naming ``key`` and the available devices when absent."""
    try:
        check_device_name(name)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    have = available_devices()
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"{key}: {name!r} is not available ({why}, torch {torch.__version__}); "
                          f"available here: {', '.join(have)} (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}: {name!r} is not available ({torch.cuda.device_count()} CUDA devices); available here: {', '.join(have)}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: 'mps' is not available (no Apple GPU, or torch built without MPS); available here: {', '.join(have)} (or auto)")
    return device


__all__ = ["available_devices", "check_device_name", "resolve_device"]
