"""Will the model fit? Estimate training memory on the ``meta`` device before allocating anything.

A typo such as ``embedding_dim: 10000000`` or ``experts: 1000000`` used to reach the allocator
(a traceback, or the kernel's OOM killer). Here the model is built, and one batch run forward,
on PyTorch's ``meta`` device, which records shapes without allocating; the estimate is

    4 × parameter bytes (weights, gradients, two Adam moments)
    + max(2 × activation bytes of a training batch, 2 × the widest layer output of an evaluation batch)

(activations: every tensor a torch function returns during the forward pass, views aside, as
autograd keeps them for backward, and their gradients). When it exceeds the memory available on
the training device, a ConfigError names the config key whose value makes the difference: each
large integer of ``model``, a feature's ``hash_buckets``, ``train.batch_size`` and
``train.eval_batch_size`` is set to 1 in turn, largest first, until the estimate fits.
:func:`out_of_memory` turns an allocation failure that slips through into a ConfigError.

Example:
    >>> human_bytes(3 * 2**30), human_bytes(1536)
    ('3.0 GiB', '1.5 KiB')
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mtlkit.data.batch import Batch
from mtlkit.errors import ConfigError, MtlkitError

TRAINING_COPIES = 4  # weights, gradients, Adam's first and second moments
Build = Callable[[Mapping[str, int]], nn.Module]  # a model with some config integers overridden


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (host memory for the CPU and MPS), or ``None`` when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


@dataclass(frozen=True)
class Estimate:
    parameters: int  # count
    parameter_bytes: int
    row_bytes: int  # every tensor the forward pass makes, for one row (kept for backward)
    widest_row_bytes: int  # the largest of them, for one row (the peak of a no-grad pass)

    def total(self, batch_size: int, eval_batch_size: int) -> int:
        """Weights, gradients and Adam moments, plus the larger of a training step and an evaluation pass."""
        step = 2 * self.row_bytes * batch_size  # activations and their gradients
        evaluation = 2 * self.widest_row_bytes * eval_batch_size  # one layer's input and output at a time
        return TRAINING_COPIES * self.parameter_bytes + max(step, evaluation)


class _TensorSizes(TorchFunctionMode):
    """Records the bytes of every tensor a torch function returns (views share memory: skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.sizes.extend(t.numel() * t.element_size() for t in _tensors(out) if not t._is_view())
        return out


def estimate(build: Build, sample: Batch, overrides: Mapping[str, int] = {}) -> Estimate:
    """Build ``build(overrides)`` and run ``sample`` through it on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = build(overrides)
    recorder = _TensorSizes()
    try:
        model.train()
        inputs = {k: v.to("meta") for k, v in sample.inputs.items()}
        with recorder:
            model(inputs)
    except Exception:  # an op without a meta kernel: the parameters alone still bound the size
        recorder.sizes.clear()
    rows = max(1, sample.size)
    return Estimate(sum(p.numel() for p in model.parameters()), sum(p.numel() * p.element_size() for p in model.parameters()),
                    sum(recorder.sizes) // rows, max(recorder.sizes, default=0) // rows)


def check_training_memory(build: Build, sample: Batch, batch_size: int, eval_batch_size: int, candidates: Mapping[str, int],
                          device: torch.device, available: int | None = None) -> None:
    """Raise a ConfigError naming the culprit key when training would not fit in memory.

    ``candidates`` are config keys (``train.batch_size`` and ``train.eval_batch_size`` among them)
    with their values; ``build`` takes overrides of the others.
    """
    available = available_memory(device) if available is None else available
    if available is None:
        return

    def needed(overrides: Mapping[str, int]) -> int:
        sizes = {"train.batch_size": batch_size, "train.eval_batch_size": eval_batch_size, **overrides}
        model_overrides = {k: v for k, v in overrides.items() if not k.startswith("train.")}
        found = estimate(build, sample, model_overrides)
        return found.total(sizes["train.batch_size"], sizes["train.eval_batch_size"])

    try:
        base = estimate(build, sample)
    except MtlkitError:
        raise  # the real build would refuse the config the same way
    except Exception:  # a model that cannot be built on the meta device: no estimate, train as before
        return
    total = base.total(batch_size, eval_batch_size)
    if total <= available:
        return
    culprit, best = None, total
    for key, value in sorted(candidates.items(), key=lambda kv: -kv[1]):
        if value < 2:
            continue
        try:
            smaller = needed({key: 1})
        except Exception:  # the value cannot be 1 (another option depends on it): not this key
            continue
        if smaller < best:
            culprit, best = (key, value), smaller
        if smaller <= available:
            break
    what = f"{culprit[0]}: {culprit[1]} makes the model" if culprit else "model: the model is"
    raise ConfigError(f"{what} too large to train here: about {human_bytes(total)} ({base.parameters:.3g} parameters, "
                      f"{human_bytes(base.row_bytes * batch_size)} of activations per batch of {batch_size}), more than the "
                      f"{human_bytes(available)} of memory free on {device}")


def integer_leaves(value: Any, prefix: str) -> dict[str, int]:
    """Every integer (not bool) inside a dumped config section, by dotted key."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in integer_leaves(item, f"{prefix}.{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in integer_leaves(item, f"{prefix}.{i}").items()}
    return {prefix: value} if isinstance(value, int) and not isinstance(value, bool) else {}


def tabular_candidates(model_spec: Any, schema: Any, batch_size: int, eval_batch_size: int) -> dict[str, int]:
    """The config integers that size a tabular model: ``model.*``, features' ``hash_buckets``, the batch."""
    found = integer_leaves(model_spec.model_dump(mode="json"), "model")
    for group in ("categorical", "sequences", "bias"):
        for i, feature in enumerate(getattr(schema, group)):
            if feature.hash_buckets:
                found[f"features.{group}.{i}.hash_buckets"] = feature.hash_buckets
    found["train.batch_size"] = batch_size
    found["train.eval_batch_size"] = eval_batch_size
    return found


def with_overrides(model_spec: Any, schema: Any, overrides: Mapping[str, int]) -> tuple[Any, Any]:
    """``model_spec`` and ``schema`` with dotted-key integers replaced (``train.*`` keys are not theirs)."""
    spec = model_spec.model_dump(mode="json")
    groups = {g: list(getattr(schema, g)) for g in ("categorical", "sequences", "bias")}
    for key, value in overrides.items():
        head, *path = key.split(".")
        if head == "model":
            node: Any = spec
            for part in path[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[int(path[-1]) if isinstance(node, list) else path[-1]] = value
        elif head == "features":
            group, index, field = path
            groups[group][int(index)] = dataclasses.replace(groups[group][int(index)], **{field: value})
    return type(model_spec).model_validate(spec), dataclasses.replace(schema, **groups)


@contextlib.contextmanager
def out_of_memory(what: str) -> Iterator[None]:
    """Turn an allocation failure inside the block into a ConfigError saying what ran out."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as error:
        raise ConfigError(f"out of memory {what}: {_first_line(error)}; make the model or train.batch_size smaller") from None
    except RuntimeError as error:
        if "can't allocate memory" not in str(error) and "not enough memory" not in str(error):
            raise
        raise ConfigError(f"out of memory {what}: {_first_line(error)}; make the model or train.batch_size smaller") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


__all__ = ["Estimate", "available_memory", "check_training_memory", "estimate", "human_bytes", "integer_leaves",
           "out_of_memory", "tabular_candidates", "with_overrides"]
