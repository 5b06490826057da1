"""Start a run from another run's weights: MT-DNN's second stage (multi-task, then per-task fine-tuning).

Liu et al. (ACL 2019, §3: "fine-tuning") train all tasks together, then fine-tune a copy of the
multi-task model on each task alone. ``init_from: RUN_DIR`` in an NLP or a tabular config (or a ``.pt``
checkpoint) loads every parameter whose name and shape match — the shared encoder, any mixing
layer, and the heads of tasks with the same name — and leaves the rest as built. Nothing matching
at all is an error (a wrong directory should not silently train from scratch).

Example:
    >>> import torch
    >>> source, target = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    >>> report = warm_start(target, source.state_dict())
    >>> report.loaded, report.skipped, bool(torch.equal(target.weight, source.weight))
    (2, [], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mtlkit.errors import ConfigError


@dataclass(frozen=True)
class WarmStartReport:
    loaded: int  # tensors copied
    skipped: list[str] = field(default_factory=list)  # in the checkpoint, with no matching name and shape here
    fresh: list[str] = field(default_factory=list)  # here, not in the checkpoint (kept as initialised)


def checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state of a run directory's ``best.pt`` (or of a checkpoint file)."""
    path = Path(path)
    file = path / "best.pt" if path.is_dir() else path
    if not file.exists():
        raise ConfigError(f"init_from: {file} does not exist (give a trained run directory or a .pt checkpoint)")
    from mtlkit.train.checkpoint import load_checkpoint

    state = load_checkpoint(file, "cpu", "check init_from", keys=())
    return state["model"] if isinstance(state, dict) and "model" in state else state


def warm_start(model: nn.Module, state: dict[str, torch.Tensor]) -> WarmStartReport:
    """Copy into ``model`` every tensor of ``state`` whose name and shape match."""
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ConfigError("init_from: no parameter of the checkpoint matches this model (another encoder or schema, or other task names?)")
    model.load_state_dict(matching, strict=False)
    return WarmStartReport(len(matching), sorted(set(state) - set(matching)), sorted(set(own) - set(matching)))


__all__ = ["WarmStartReport", "checkpoint_state", "warm_start"]
