"""Which precision a run trains in: ``train.precision: auto`` (the default) takes bf16 where the
hardware runs it natively and fp32 everywhere else.

bf16 autocast is only a speed-up where the matrix units compute in bf16. Without them it is
emulated (oneDNN converts to fp32 and back around every matmul) and is far slower than fp32:
a MiniLM training step (batch 32 × 32 tokens, one thread) took 9.5 s in bf16 against 0.96 s in
fp32 on an AVX512-BF16 CPU with oneDNN capped to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), and 0.38 s
against 0.89 s with its AVX512-BF16 in use (``benchmarks/precision.py --model minilm --emulate``).
Native means:

- CUDA: a GPU with bf16 arithmetic (Ampere and later), not its emulation on older ones;
- CPU: AVX512-BF16 or AMX-BF16 (x86), the BF16 extension (Arm), *and* oneDNN willing to use
  it (its own check, which honours ``ONEDNN_MAX_CPU_ISA``).

fp16 (with its gradient scaler, :mod:`mtlkit.train.mixed_precision`) trains on CUDA and on CPUs,
natively with AVX512-FP16 or AMX-FP16; elsewhere it is emulated and warned about like bf16.
``auto`` never picks fp16 (its gradient scaler restricts the balancers) nor a precision the
balancer cannot train in (MGDA-UB differentiates the low-precision representation): those get
fp32. An explicit ``bf16`` on a CPU that emulates it trains as asked, after a one-line warning
on the ``mtlkit`` logger. The precision a run resolved to is in its ``summary.json``.

Example:
    >>> resolve_precision("fp32", torch.device("cpu"))
    'fp32'
    >>> cpu_bf16_native({"avx2", "fma"}, onednn_bf16=True), cpu_bf16_native({"avx512_bf16"}, onednn_bf16=True)
    (False, True)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

log = logging.getLogger("mtlkit")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16, AMX-BF16; Arm's BF16 (/proc/cpuinfo "Features")
_NATIVE_FP16_FLAGS = {"avx512_fp16", "amx_fp16", "fphp"}  # x86 AVX512-FP16 (Sapphire Rapids), AMX-FP16; Arm's FP16 arithmetic


def cpu_bf16_native(flags: Iterable[str], onednn_bf16: bool) -> bool:
    """Whether a CPU with these feature ``flags`` computes bf16 matmuls natively (oneDNN agreeing)."""
    return onednn_bf16 and not _NATIVE_BF16_FLAGS.isdisjoint(flags)


def cpu_flags() -> set[str]:
    """The CPU's feature flags: torch's own probe (torch >= 2.6) and ``/proc/cpuinfo``, together."""
    flags: set[str] = set()
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        try:
            flags |= {name for name, value in probe().items() if value is True}
        except RuntimeError:
            pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return flags
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return flags | set(line.partition(":")[2].split())


def onednn_fp16() -> bool:
    """oneDNN's own fp16 check (AVX512-FP16 or AMX-FP16 in use)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def onednn_bf16() -> bool:
    """oneDNN's own bf16 check (False when it is capped below AVX512, e.g. by ONEDNN_MAX_CPU_ISA)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ("cpu", "cuda", …) runs bf16 natively; probed once per process."""
    if device_type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch before 2.3 had no emulation to exclude
            return bool(torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        return cpu_bf16_native(cpu_flags(), onednn_bf16())
    return False


@functools.cache
def native_fp16(device_type: str) -> bool:
    """Whether ``device_type`` runs fp16 matmuls natively: every CUDA GPU torch supports; a CPU with AVX512-FP16/AMX-FP16."""
    if device_type == "cuda":
        return True
    if device_type == "cpu":
        return onednn_fp16() and not _NATIVE_FP16_FLAGS.isdisjoint(cpu_flags())
    return False


def resolve_precision(requested: str, device: torch.device, low_precision_ok: bool = True) -> str:
    """The precision to train in: ``requested`` itself, or for ``"auto"`` bf16 if native (and
    ``low_precision_ok``: the balancer trains in it) else fp32. Warns on an emulated explicit bf16."""
    if requested == "auto":
        return "bf16" if low_precision_ok and native_bf16(device.type) else "fp32"
    if requested == "bf16" and device.type == "cpu" and not native_bf16("cpu"):
        log.warning("train.precision: bf16 is emulated on this CPU (oneDNN has no AVX512-BF16 or AMX to use), "
                    "many times slower than fp32 (benchmarks/precision.py); use precision: auto or fp32")
    if requested == "fp16" and device.type == "cpu" and not native_fp16("cpu"):
        log.warning("train.precision: fp16 is emulated on this CPU (no AVX512-FP16 or AMX-FP16), slower than fp32; "
                    "use precision: auto, fp32 or bf16")
    return requested


__all__ = ["PRECISIONS", "cpu_bf16_native", "cpu_flags", "native_bf16", "native_fp16", "onednn_bf16", "onednn_fp16",
           "resolve_precision"]
