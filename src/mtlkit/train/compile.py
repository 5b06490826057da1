"""``train.compile``: the model's training forward under ``torch.compile``, with an eager fallback.

Evaluation stays eager, and the trainer's ``model`` stays the uncompiled module, so checkpoints
have its keys (no ``_orig_mod.``). The first step's batch is compiled and back-propagated once
before training (gradients dropped, buffers and RNG restored), so a compiler failure falls back
to eager with a warning before anything has changed.

Example:
    >>> model = torch.nn.Linear(2, 1)
    >>> forward = CompiledForward(model, enabled=False)
    >>> forward.module is model, forward.compiled
    (True, False)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn


class CompiledForward:
    """What the training step calls: ``torch.compile(model)``, or the model itself."""

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        self.model = model
        self.module: Callable[..., Any] = model
        self.pending = False
        if enabled:
            try:
                self.module, self.pending = torch.compile(model), True
            except Exception as error:  # e.g. a Python version torch.compile does not support yet
                compile_failed(error)

    @property
    def compiled(self) -> bool:
        return self.module is not self.model

    def __call__(self, *args: Any) -> Any:
        return self.module(*args)

    def settings(self) -> AbstractContextManager[Any]:
        """Held for the whole training loop while compiled."""
        if not self.compiled:
            return contextlib.nullcontext()
        import torch._functorch.config as functorch_config  # (private torch config, only when compiling)

        # Gradient methods run several backward passes through one forward (retain_graph=True),
        # which a compiled backward that donates its buffers refuses; the flag is read at compile
        # and at backward time, so it holds for the whole training loop.
        return functorch_config.patch(donated_buffer=False)

    def compile_now(self, probe: Callable[[], Any]) -> None:
        """Compile (forward and backward) on ``probe()``'s logits before training; on failure fall back
        to eager with nothing to undo: the probe's gradients are dropped and the buffers
        (BatchNorm statistics) and RNG state it moved are restored."""
        self.pending = False
        buffers = [b.detach().clone() for b in self.model.buffers()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            logits = probe()
            total = torch.stack([v.float().sum() for v in logits.values()]).sum()
            if total.requires_grad:
                total.backward()
        except Exception as error:
            self.module = self.model
            compile_failed(error)
        finally:
            self.model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)


def compile_failed(error: Exception) -> None:
    root: BaseException = error
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = inner  # Dynamo wraps the compiler's own error (BackendCompilerFailed)
    first = (str(root).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"train.compile: torch.compile failed ({type(root).__name__}: {first}); training without compilation",
                  RuntimeWarning, stacklevel=3)


__all__ = ["CompiledForward", "compile_failed"]
