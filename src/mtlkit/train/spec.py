"""Training options, validated before any work starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mtlkit.train.device import check_device_name


class TrainSpec(BaseModel):
    """Optimiser, schedule, selection and logging settings of one run.

    ``monitor`` chooses the validation score for early stopping and the best checkpoint:
    ``"loss"`` (sum of the tasks' weighted validation losses, lower is better), a metric name
    such as ``"auc"`` (its mean over the tasks that report it), or ``"task/metric"``.
    The test split is never used for either.

    ``precision`` is that of the forward pass and the task losses (autocast); parameters, optimiser
    state, losses, loss sums and the gradient balancers' Jacobians stay fp32. ``"auto"`` (the
    default) is bf16 where the hardware runs it natively (:mod:`mtlkit.train.precision`), else
    fp32. ``"bf16"`` runs on CPU (emulated, and slow, without AVX512-BF16/AMX) and CUDA; ``"fp16"``
    trains with a gradient scaler, on CUDA or a CPU (emulated without AVX512-FP16/AMX-FP16) (see
    :mod:`mtlkit.train.mixed_precision` for which balancers are exact under loss scaling). ``compile``
    wraps the model's forward in ``torch.compile``, falling back to eager with a warning if
    compilation fails; checkpoints hold the uncompiled module's state either way.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    eval_batch_size: int = Field(default=8192, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    # Learning rate of the task heads (``model.head_parameters()``), e.g. PURE's 5e-4 next to 1e-5 for
    # a pre-trained encoder: a fresh head on a slow encoder learns too slowly at the encoder's rate.
    head_lr: float | None = Field(default=None, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    monitor: str = "loss"
    patience: int | None = Field(default=3, ge=1)
    log_every: int = Field(default=50, ge=1)  # steps between loss read-backs (progress bar, TensorBoard)
    # Off a terminal (a file, CI, nohup): one progress line this often and at every epoch end.
    log_every_seconds: float = Field(default=30.0, gt=0)
    checkpoint_every: int | None = Field(default=None, ge=1)
    tensorboard: bool = False
    grad_diagnostics_every: int | None = Field(default=None, ge=1)  # per-task gradient norms/cosines → gradients.csv/.png
    threads: int | None = Field(default=None, ge=1)
    device: str = "cpu"
    progress: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False

    _device_name = field_validator("device")(check_device_name)  # availability: resolve_device, at training

    @model_validator(mode="after")
    def _check_precision(self) -> TrainSpec:
        # "auto" resolves to a device only in the trainer, which checks it again there.
        if self.precision in ("bf16", "fp16") and self.device.split(":")[0] not in ("cpu", "cuda", "auto"):
            raise ValueError(f"precision {self.precision!r} trains on cpu or cuda (device is {self.device!r}): use fp32")
        return self
