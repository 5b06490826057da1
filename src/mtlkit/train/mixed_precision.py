"""Mixed precision in the training step: autocast, and fp16's gradient scaler meeting the balancers.

The forward pass and the task losses run under ``torch.autocast``; parameters, optimiser state
and the gradients written into ``.grad`` stay fp32. Losses are computed from logits cast to fp32,
so the loss sums, the logged values and the gradient balancers' Jacobians (taken w.r.t. the fp32
shared parameters) and Gramians are fp32. ``bf16`` needs no loss scaling (fp32's exponent range).
``fp16`` (CUDA, or a CPU: native with AVX512-FP16/AMX-FP16, emulated elsewhere) trains with a
``GradScaler``: the losses are multiplied by a scale ``S`` before the backward pass, so that small
activation gradients do not underflow fp16, and the gradients are divided by ``S`` before clipping
and the optimiser step; a step whose gradients overflow is skipped and ``S`` lowered. How each
balancer meets the scale:

- loss weighting (``backward(Σ_k w_k L_k)``): the weights are computed from the unscaled losses
  and the combined loss is scaled — exact for every method, including learned weights.
- gradient methods receive the scaled losses, so they aggregate ``S·J`` — the same as unscaling
  ``J`` first when the update is proportional to the scale (``d(S·J) = S·d(J)``, no use of the
  loss values) and an overflow (a non-finite ``J``) gives a non-finite update that the scaler
  skips, without an exception or a lasting change to the method's state. pcgrad, cagrad,
  upgrad, dualproj, graddrop and mgda (``normalize: none``) pass (``tests/test_precision.py``
  checks both properties). The others are rejected with a ConfigError giving the reason
  (:data:`FP16_UNSAFE`). Use bf16 for them.
- mgda_ub is rejected under bf16 too: its Jacobian is taken w.r.t. the low-precision shared
  representation, not the fp32 parameters.

Example:
    >>> amp = MixedPrecision("bf16", torch.device("cpu"))
    >>> with amp.autocast():
    ...     y = torch.nn.Linear(4, 2)(torch.randn(3, 4))
    >>> y.dtype, amp.scaler is None
    (torch.bfloat16, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from mtlkit.balancing import BALANCERS, Balancer, GradientBalancer, LossWeighting
from mtlkit.balancing.mgda import MGDA
from mtlkit.errors import ConfigError
from mtlkit.protocols import TrainableModel
from mtlkit.train.spec import TrainSpec

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Gradient methods exact under fp16 loss scaling (see the module docstring); MGDA only without
# normalisation (its "l2"/"loss" normalisations make the update independent of the scale).
FP16_GRADIENT_METHODS = ("pcgrad", "cagrad", "upgrad", "dualproj", "graddrop", "mgda")
FP16_UNSAFE = {
    "nash_mtl": "its update does not grow with the loss scale (α solves Gα = 1/α), so unscaling would shrink it",
    "db_mtl": "it differentiates log L_k, where the loss scale cancels: unscaling would shrink its update",
    "gradnorm": "it fits gradient norms and loss ratios measured under a loss scale that changes between steps",
    "gradvac": "one overflowing (skipped) step writes NaN into its running cosine targets for good",
    "aligned_mtl": "its eigensolver raises on the overflowing Jacobians a gradient scaler produces instead of skipping the step",
    "imtl_g": "its SVD raises on the overflowing Jacobians a gradient scaler produces instead of skipping the step",
    "mgda_ub": "its Jacobian w.r.t. the fp16 representation would overflow (its Gramian carries the scale squared)",
    "mgda": "its 'l2'/'loss' normalisations make the update independent of the loss scale (use normalize: none)",
}
LOW_PRECISION_DEVICES = ("cpu", "cuda")


def balancer_name(balancer: Balancer) -> str:
    return next((n for n in BALANCERS.names() if BALANCERS.get(n) is type(balancer)), type(balancer).__name__)


def check_precision_and_compile(spec: TrainSpec, precision: str, device: torch.device, balancer: Balancer) -> None:
    """Reject, before any work, the combinations that cannot train correctly (``precision``: resolved)."""
    name = balancer_name(balancer)
    needs_features = balancer.needs_shared_features
    if precision != "fp32":
        if device.type not in LOW_PRECISION_DEVICES:
            raise ConfigError(f"train.precision: {precision} is supported on cpu and cuda, not {device.type}")
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision: this GPU has no bf16 support; use fp16")
        if needs_features:
            raise ConfigError(f"train.precision: {precision} with balancer {name!r}: its Jacobian w.r.t. the shared "
                              f"representation would be {precision}, not fp32; use 'mgda' (w.r.t. the fp32 shared parameters)")
    if precision == "fp16" and type(balancer).backward is not LossWeighting.backward:
        safe = name in FP16_GRADIENT_METHODS and not (name == "mgda" and isinstance(balancer, MGDA) and balancer.options.normalize != "none")
        if not safe:
            why = FP16_UNSAFE.get(name, "it is not known to be exact under loss scaling")
            raise ConfigError(f"train.precision: fp16 with balancer {name!r} is unsafe: {why}; use bf16, a loss-weighting "
                              f"balancer or one of {', '.join(FP16_GRADIENT_METHODS)}")
    if spec.compile:
        if needs_features:
            raise ConfigError(f"train.compile with balancer {name!r}: the shared representation it differentiates is "
                              "inside the compiled graph, so its gradients would be missing; use 'mgda' or compile: false")
        jacobian = balancer.options.jacobian if isinstance(balancer, GradientBalancer) else None
        if jacobian == "batched" or (jacobian == "auto" and device.type != "cpu"):
            raise ConfigError(f"train.compile with balancer {name!r}: its Jacobian is vmapped ('batched' on {device.type}), "
                              "which a compiled backward does not support; set the balancer option jacobian: loop")


class MixedPrecision:
    """The precision of one training run: its autocast context and, for fp16, the gradient scaler."""

    def __init__(self, precision: str, device: torch.device, balancer: Balancer | None = None) -> None:
        self.precision = precision
        self.device = device
        self.dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        # Σ w_k L_k: only the combined loss is scaled (the weights come from the unscaled losses)
        self._loss_level = balancer is not None and type(balancer).backward is LossWeighting.backward

    def autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, balancer: Balancer, losses: Mapping[str, Tensor], model: TrainableModel) -> None:
        """The balancer's backward of the task losses (scaled under fp16 as the module docstring says)."""
        if self.scaler is None:
            balancer.backward(losses, model)
        elif isinstance(balancer, LossWeighting) and self._loss_level:  # weights from the unscaled losses
            self.scaler.scale(balancer.combine(losses)).backward()
        else:  # an fp16-safe gradient method: it aggregates S·J into S·d (module docstring)
            balancer.backward({k: self.scaler.scale(v) for k, v in losses.items()}, model)

    def backward_penalty(self, penalty: Tensor | None) -> None:
        """A parameter penalty (SNR's L0): not a task loss, so outside the balancer; a parameter-only graph."""
        if penalty is not None:
            (penalty if self.scaler is None else self.scaler.scale(penalty)).backward()

    def unscale_(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Gradients in true units before clipping (a no-op without a scaler)."""
        if self.scaler is not None:
            for optimizer in optimizers:
                self.scaler.unscale_(optimizer)

    def step(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Each optimiser's step; with a scaler each skips a step whose gradients overflowed, then the scale adapts once."""
        if self.scaler is None:
            for optimizer in optimizers:
                optimizer.step()
            return
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:  # the loss scale reached, for an exact resume
            self.scaler.load_state_dict(state)


__all__ = ["AUTOCAST_DTYPES", "FP16_GRADIENT_METHODS", "FP16_UNSAFE", "MixedPrecision", "check_precision_and_compile"]
