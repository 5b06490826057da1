"""What every benchmark prints about the machine it ran on, and a free loopback port for servers.

Benchmarks compare ratios measured in one run; the CPU model and its matmul-relevant flags say
which machine the absolute figures belong to (an AVX2-only CPU and one with AVX512-BF16/AMX are
several times apart).
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _cpuinfo(key: str) -> str | None:
    try:
        return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith(key)), None)
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_description() -> str:
    """The model, the logical CPU count and which of :data:`FLAGS` the CPU has."""
    present = set((_cpuinfo("flags") or "").split())
    flags = [f for f in FLAGS if f in present]
    return f"{cpu_model()} ({os.cpu_count()} logical CPUs; flags: {' '.join(flags) or 'n/a'})"


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
