"""The training loop: steps, schedule, validation, early stopping, checkpoints, resumption.

One step takes a list of batches (one for a shared table, one per task for per-task datasets),
computes every present task's loss, hands them to the balancer for the backward pass, clips and
steps. Losses are accumulated on the device and read back only every ``log_every`` steps, when a
progress line is due (every ``log_every_seconds`` off a terminal: :mod:`mtlkit.train.progress`)
and at the end of an epoch.

Checkpoints (``last.pt``) hold the model, optimiser, scheduler and balancer states, the RNG
state, the position (epoch and step) and the history. Because the shuffle order of an epoch is a
function of the seed and the epoch number, resuming from a checkpoint — saved at epoch ends,
every ``checkpoint_every`` steps, or on Ctrl-C — continues with exactly the batches and random
draws the uninterrupted run would have seen. The best model (``best.pt``) is chosen on the
validation split only; an independent-task model (the single-task baseline) keeps each task's
best epoch separately.

Mixed precision (``train.precision``; ``auto``, the default, is bf16 where the hardware runs it
natively and fp32 elsewhere: :mod:`mtlkit.train.precision`): the forward pass and the task losses run under
``torch.autocast``; parameters, optimiser state and the gradients written into ``.grad`` stay
fp32. Losses are computed from logits cast to fp32, so the loss sums, the logged values and the
gradient balancers' Jacobians (taken w.r.t. the fp32 shared parameters) and Gramians are fp32.
Evaluation runs in fp32: selection and test metrics are those of the model that export and serving
run. ``"bf16"`` needs no loss scaling (fp32's exponent range). ``"fp16"`` (CUDA only) trains with
a ``GradScaler``: the losses are multiplied by a scale ``S`` before the backward pass, so that
small activation gradients do not underflow fp16, and the gradients are divided by ``S`` before
clipping and the optimiser step; a step whose gradients overflow is skipped and ``S`` lowered.
How each balancer meets the scale:

- loss weighting (``backward(Σ_k w_k L_k)``): the weights are computed from the unscaled losses
  and the combined loss is scaled — exact for every method, including learned weights.
- gradient methods receive the scaled losses, so they aggregate ``S·J`` — the same as unscaling
  ``J`` first when the update is proportional to the scale (``d(S·J) = S·d(J)``, no use of the
  loss values) and an overflow (a non-finite ``J``) gives a non-finite update that the scaler
  skips, without an exception or a lasting change to the method's state. pcgrad, cagrad,
  upgrad, dualproj, graddrop and mgda (``normalize: none``) pass (``tests/test_precision.py``
  checks both properties). The others are rejected with a ConfigError giving the reason
  (``_FP16_UNSAFE``): nash_mtl and db_mtl (update not proportional to the scale), mgda's
  normalisations, gradnorm (norm and loss-ratio targets under a changing scale), gradvac (an
  overflow poisons its running targets), aligned_mtl and imtl_g (their solvers raise on an
  overflow), mgda_ub (an fp16 representation Jacobian). Use bf16 for them.
- mgda_ub is rejected under bf16 too: its Jacobian is taken w.r.t. the low-precision shared
  representation, not the fp32 parameters.

``train.compile`` wraps the model in ``torch.compile`` for the training forward only (evaluation
stays eager); ``self.model`` stays the uncompiled module, so checkpoints have its keys (no
``_orig_mod.``). The first step's batch is compiled and back-propagated once before training
(gradients dropped, buffers and RNG restored), so a compiler failure falls back to eager with a
warning before anything has changed.

Data-parallel training (``torchrun``; the design is in :mod:`mtlkit.train.distributed`): when a
``torch.distributed`` process group is initialised, the trainer broadcasts rank 0's weights, takes
rows ``rank::world`` of every global batch, averages the gradients over ranks after the balancer's
backward (a gradient method aggregates the rank-averaged task Jacobian), all-reduces the epoch
loss sums, evaluates the whole validation split on every rank, and only rank 0 writes files and
shows progress. Positions count global steps, so a checkpoint resumes with any number of ranks.

Example:
    >>> import torch
    >>> from mtlkit.data.batch import EncodedTable
    >>> from mtlkit.tasks import Task
    >>> from mtlkit.balancing import BalancerSpec, build_balancer
    >>> tasks = [Task(name="y", kind="regression")]
    >>> x = torch.randn(256, 1)
    >>> table = EncodedTable({"numeric": x}, {"y": 3 * x[:, 0]}, {"y": torch.ones(256, dtype=torch.bool)})
    >>> from mtlkit.protocols import TrainableModel
    >>> class Linear(TrainableModel):
    ...     def __init__(self):
    ...         super().__init__(["y"])
    ...         self.w = torch.nn.Linear(1, 1)
    ...     def forward(self, inputs):
    ...         return {"y": self.w(inputs["numeric"]).squeeze(-1)}
    >>> trainer = Trainer(Linear(), tasks, build_balancer(BalancerSpec(), tasks),
    ...                   TrainSpec(epochs=30, batch_size=32, lr=0.05, progress=False, patience=None))
    >>> result = trainer.fit(table.batches(32, shuffle=True), table)
    >>> result.best_results["y"]["rmse"] < 0.05
    True
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.balancing import BALANCERS, Balancer, GradientBalancer, LossWeighting
from mtlkit.balancing.gradient import split_parameters
from mtlkit.data.batch import Batch, EncodedTable
from mtlkit.errors import ConfigError
from mtlkit.protocols import Evaluator, TrainableModel, TrainTask
from mtlkit.train import distributed
from mtlkit.train.checkpoint import load_checkpoint
from mtlkit.train.device import resolve_device
from mtlkit.train.evaluate import TableEvaluator, flatten_metrics
from mtlkit.train.precision import resolve_precision
from mtlkit.train.progress import epoch_progress
from mtlkit.train.selection import check_monitor, selection_score, task_score
from mtlkit.train.spec import TrainSpec

CHECKPOINT_VERSION = 1

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# fp16 autocast and its gradient scaler are for CUDA (on CPU use bf16); the tests widen this to
# exercise the scaler logic on a machine without a GPU.
_FP16_DEVICES: tuple[str, ...] = ("cuda",)
# Gradient methods exact under fp16 loss scaling (see the module docstring); MGDA only without
# normalisation (its "l2"/"loss" normalisations make the update independent of the scale).
_FP16_GRADIENT_METHODS = ("pcgrad", "cagrad", "upgrad", "dualproj", "graddrop", "mgda")
_FP16_UNSAFE = {
    "nash_mtl": "its update does not grow with the loss scale (α solves Gα = 1/α), so unscaling would shrink it",
    "db_mtl": "it differentiates log L_k, where the loss scale cancels: unscaling would shrink its update",
    "gradnorm": "it fits gradient norms and loss ratios measured under a loss scale that changes between steps",
    "gradvac": "one overflowing (skipped) step writes NaN into its running cosine targets for good",
    "aligned_mtl": "its eigensolver raises on the overflowing Jacobians a gradient scaler produces instead of skipping the step",
    "imtl_g": "its SVD raises on the overflowing Jacobians a gradient scaler produces instead of skipping the step",
    "mgda_ub": "its Jacobian w.r.t. the fp16 representation would overflow (its Gramian carries the scale squared)",
    "mgda": "its 'l2'/'loss' normalisations make the update independent of the loss scale (use normalize: none)",
}


class Callback:
    """Hooks into training; a callback may add entries to the epoch record before it is written."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any], validation: EncodedTable) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None:
        pass


class BatchSource:
    """What the trainer iterates: ``len()`` steps per epoch, each a list of batches."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[list[Batch]]: ...


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: dict[str, int]
    best_results: dict[str, dict[str, float]]
    stopped_early: bool
    seconds: float
    train_samples: int = 0
    train_seconds: float = 0.0  # the training loop alone, without evaluation or checkpoints
    precision: str = "fp32"  # what train.precision resolved to ("auto": bf16 where native)


@dataclass
class _Position:
    epoch: int = 0
    step: int = 0  # steps already done in `epoch`
    global_step: int = 0
    best_score: dict[str, float] = field(default_factory=dict)
    best_epoch: dict[str, int] = field(default_factory=dict)
    stale_epochs: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_results: dict[str, dict[str, float]] = field(default_factory=dict)


def _schedule(spec: TrainSpec, total_steps: int):
    def factor(step: int) -> float:
        if spec.warmup_steps and step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, total_steps - spec.warmup_steps)
        if spec.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if spec.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file then rename, so a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


RESUME_HINT = "to start the run again instead of resuming it, pass --overwrite"


class Trainer:
    def __init__(
        self,
        model: TrainableModel,
        tasks: Sequence[TrainTask],
        balancer: Balancer,
        spec: TrainSpec,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        if not isinstance(model, TrainableModel):
            raise TypeError(f"the trainer trains a mtlkit.protocols.TrainableModel, got {type(model).__name__}")
        check_monitor(spec.monitor, tasks)
        if spec.tensorboard and run_dir is not None:
            try:  # fail now, not after the first epoch
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise ConfigError("train.tensorboard: install the extra `mtlkit[tensorboard]`") from None
        self.model = model
        self.tasks = list(tasks)
        self.balancer = balancer
        # ESMM's CVR is predicted and evaluated but trained only through CTCVR: no loss of its own.
        self.loss_task_names = model.loss_task_names
        if list(balancer.task_names) != self.loss_task_names:
            raise ConfigError(f"the balancer weighs tasks {balancer.task_names} but the model trains "
                              f"{self.loss_task_names}: build it for model.loss_task_names")
        self.spec = spec
        # Data-parallel (mtlkit.train.distributed): every rank reads a checkpoint from `_resume_dir`;
        # only rank 0 has a `run_dir` to write to and shows progress.
        self.dist = distributed.context()
        self._resume_dir = Path(run_dir) if run_dir is not None else None
        self.run_dir = self._resume_dir if self.dist.is_main else None
        self._show_progress = spec.progress and self.dist.is_main
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.callbacks = list(callbacks)
        self.device = resolve_device(spec.device)
        # "auto": bf16 where the hardware runs it natively and the balancer trains in it, else fp32
        self.precision = resolve_precision(spec.precision, self.device, not balancer.needs_shared_features)
        _check_precision_and_compile(spec, self.precision, self.device, balancer)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.model.to(self.device)
        self.balancer.to(self.device)
        self._reduce_params: list[nn.Parameter] = []
        if self.dist.enabled:
            distributed.broadcast_state(self.model, self.balancer)
            shared_ids: set[int] = set()
            if isinstance(balancer, GradientBalancer):  # aggregates the rank-averaged Jacobian
                distributed.reduce_gradient_balancer(balancer, self.dist.world)
                shared_ids = {id(p) for p in split_parameters(model)[0]}
            # The shared gradients of a gradient method are equal on every rank already.
            self._reduce_params = [p for p in [*model.parameters(), *balancer.parameters()]
                                   if p.requires_grad and id(p) not in shared_ids]
        optimizer_cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
        # Balancer parameters (log-variances, GradNorm weights) are not model weights: decaying
        # them towards 0 would bias the weighting itself, so they get their own group without decay.
        params = [p for p in model.parameters() if p.requires_grad]
        # Biases and normalisation scales (1-D tensors) are not decayed either: the usual AdamW
        # recipe (Loshchilov & Hutter 2019; BERT), since shrinking them regularises nothing useful.
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": spec.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}] if spec.weight_decay else \
                 [{"params": params, "weight_decay": 0.0}]
        if spec.head_lr is not None:  # the heads in groups of their own, at their own rate
            heads = {id(p) for p in model.head_parameters()}
            groups = [part for g in groups for part in (
                {**g, "params": [p for p in g["params"] if id(p) not in heads]},
                {**g, "params": [p for p in g["params"] if id(p) in heads], "lr": spec.head_lr})]
        groups = [g for g in groups if g["params"]]
        balancer_params = [p for p in balancer.parameters() if p.requires_grad]
        if balancer_params:
            groups.append({"params": balancer_params, "weight_decay": 0.0})
        # The fused kernel updates all parameters in one pass instead of a Python loop over them.
        self.optimizer = optimizer_cls(groups, lr=spec.lr, fused=True)
        self._clip_params = [p for g in self.optimizer.param_groups for p in g["params"]]  # fixed: built once
        self.independent = model.independent_tasks
        # Selection units: one per task for independent networks, else one for the whole model.
        self.units = {t.name: model.task_state_prefix(t.name) for t in tasks} if self.independent else {"model": ""}
        self._tb = None
        self._resumed_sums: list[Tensor] | None = None  # a mid-epoch checkpoint's loss sums, read by the next epoch
        # Representation-level balancers (MGDA-UB) read the shared features of the step's forwards.
        self._keep_features = balancer.needs_shared_features
        if self._keep_features:
            model.keep_shared_features = True
        self.grad_monitor = None
        if spec.grad_diagnostics_every:
            from mtlkit.diagnostics.gradients import GradientMonitor

            # Under compile a vmapped ("batched") Jacobian is not supported: per-task backwards.
            self.grad_monitor = GradientMonitor([t.name for t in tasks], spec.grad_diagnostics_every, self.run_dir,
                                                jacobian="loop" if spec.compile else "auto")
        self._autocast_dtype = _AUTOCAST_DTYPES.get(self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self._loss_level = type(balancer).backward is LossWeighting.backward  # Σ w_k L_k: scale the total
        self._forward: Callable[..., Any] = model
        self._compile_pending = False
        if spec.compile:
            try:
                self._forward, self._compile_pending = torch.compile(model), True
            except Exception as error:  # e.g. a Python version torch.compile does not support yet
                _compile_failed(error)

    # -- public API -------------------------------------------------------------------------
    def fit(self, train: BatchSource, validation: EncodedTable | Evaluator, resume: bool = True) -> FitResult:
        train = distributed.shard_source(train, self.dist)  # rank r's rows of each global batch
        steps_per_epoch = len(train)
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(self.spec, self.spec.epochs * steps_per_epoch))
        # a labelled table, or an evaluator of its own (e.g. per-task NLP splits)
        evaluator = TableEvaluator(self.tasks, validation, self.spec.eval_batch_size) if isinstance(validation, EncodedTable) else validation
        pos = _Position()
        best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        found = resume and self._resume_dir is not None and (self._resume_dir / "last.pt").exists()
        if self.dist.enabled:  # every rank resumes from rank 0's last.pt, or none does
            flags = torch.tensor([float(found), 1.0 - float(found)], device=self.device)  # NCCL: device tensors
            distributed.all_reduce_sum_(flags)
            if 0 < flags[0] < self.dist.world:
                raise ConfigError(f"{self._resume_dir}: last.pt is visible on {int(flags[0])} of {self.dist.world} ranks; "
                                  "distributed training needs the run directory on a shared file system")
        if found:
            pos, best_state = self._load(scheduler)
        self._rewrite_metric_files(pos.history)
        start = time.perf_counter()
        stopped_early = self._finished(pos)
        samples, train_seconds = 0, 0.0
        while pos.epoch < self.spec.epochs and not stopped_early:
            epoch_start = time.perf_counter()
            samples += self._train_epoch(train, scheduler, pos, steps_per_epoch, best_state)
            train_seconds += time.perf_counter() - epoch_start
            results = evaluator.evaluate(self.model, self.device)
            if self.dist.enabled:  # every rank evaluated the whole split; rank 0's numbers decide for all
                results = distributed.broadcast_object(results)
            improved = self._select(results, pos, best_state)
            record = {
                "epoch": pos.epoch + 1,
                "step": pos.global_step,
                "lr": scheduler.get_last_lr()[0],
                **{f"train/{k}/loss": v for k, v in self._epoch_losses.items()},
                **flatten_metrics(results, "val"),
                "score": selection_score(results, self.tasks, self.spec.monitor),
                "improved": improved,
            }
            for callback in self.callbacks:
                callback.on_epoch_end(self, record, validation)
            pos.history.append(record)
            if self._show_progress:
                _print_epoch(record, results)
            self.balancer.epoch_end(pos.epoch, self._epoch_losses)
            if self.grad_monitor is not None:
                self.grad_monitor.flush()  # one read-back per epoch; gradients.csv / gradients.png
            pos.epoch, pos.step = pos.epoch + 1, 0
            self._append_metrics(record)
            stopped_early = self._finished(pos)
            self._checkpoint(scheduler, pos, best_state)
        self.model.load_state_dict(best_state)
        if self.dist.enabled:  # rows trained by all ranks
            total = torch.tensor([float(samples)], dtype=torch.float64, device=self.device)
            distributed.all_reduce_sum_(total)
            samples = int(total.item())
        if self._tb is not None:
            self._tb.close()
        result = FitResult(pos.history, dict(pos.best_epoch), pos.best_results, stopped_early and pos.epoch < self.spec.epochs,
                           time.perf_counter() - start, samples, train_seconds, self.precision)
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    # -- one epoch ---------------------------------------------------------------------------
    def _train_epoch(self, train: BatchSource, scheduler, pos: _Position, steps_per_epoch: int, best_state) -> int:
        self.model.train()
        names = self.loss_task_names
        by_name = {t.name: t for t in self.tasks if t.name in names}
        saved = self._resumed_sums
        loss_sum = saved[0].to(self.device) if saved else torch.zeros(len(names), device=self.device)
        row_sum = saved[1].to(self.device) if saved else torch.zeros(len(names), device=self.device)
        self._resumed_sums = None
        samples = 0
        progress = epoch_progress(self._show_progress, pos.epoch, self.spec.epochs, steps_per_epoch, pos.step,
                                  self.spec.log_every_seconds)
        try:
            with progress as bar, self._compile_settings():
                for step_batches in train.epoch(pos.epoch, pos.step):
                    losses: dict[str, Tensor] = {}
                    rows: dict[str, Tensor] = {}
                    features: list[Tensor] = []
                    # the fraction of training done (annealed GRL): a function of the global step, so it resumes exactly
                    self.model.set_training_progress(pos.global_step / (self.spec.epochs * steps_per_epoch))
                    if self._compile_pending:
                        self._compile_now(step_batches)
                    for batch in step_batches:
                        batch = batch.to(self.device)
                        samples += batch.size
                        with self._autocast():
                            logits = self._call_model(batch)
                            if self._keep_features:
                                features.append(self.model.last_shared_features)
                            for name in batch.tasks:
                                if name not in by_name:
                                    continue
                                task = by_name[name]
                                weight, mask = batch.weights.get(name), batch.masks[name]
                                # fp32 losses from low-precision logits (a no-op in fp32): loss sums,
                                # logged values and the balancers' Jacobians stay fp32.
                                losses[name] = task.compute_loss(logits[name].float(), batch.targets[name], weight, mask)
                                rows[name] = mask.sum()
                            for name, penalty in self.model.task_penalties().items():  # AITM's calibrator: part of its task's objective
                                if name in losses:
                                    losses[name] = losses[name] + penalty.float()
                    # Data-parallel: each rank's mean loss re-weighted by its share of the task's
                    # labelled rows, so that the rank average is the global batch's mean loss.
                    step_losses = distributed.global_mean_losses(losses, rows, self.dist.world) if self.dist.enabled else losses
                    self.optimizer.zero_grad(set_to_none=True)
                    if self._keep_features:  # every forward of the step, not only the last one
                        self.model.last_shared_features = features[0] if len(features) == 1 else features
                    if self.grad_monitor is not None:
                        self.grad_monitor.record(pos.global_step, step_losses, self.model)
                    if self.scaler is None:
                        self.balancer.backward(step_losses, self.model)
                    elif self._loss_level:  # weights from the unscaled losses; only the total is scaled
                        self.scaler.scale(self.balancer.combine(step_losses)).backward()
                    else:  # an fp16-safe gradient method: it aggregates S·J into S·d (module docstring)
                        self.balancer.backward({k: self.scaler.scale(v) for k, v in step_losses.items()}, self.model)
                    penalty = self.model.regularization_loss()
                    if penalty is not None:  # not a task loss, so outside the balancer; a parameter-only graph
                        (penalty if self.scaler is None else self.scaler.scale(penalty)).backward()
                    if self.dist.enabled:  # average over ranks before clipping, unscaling and the step
                        distributed.all_reduce_grads(self._reduce_params, self.dist.world)
                    if self.spec.grad_clip:
                        if self.scaler is not None:
                            self.scaler.unscale_(self.optimizer)  # the threshold is in true gradient units
                        nn.utils.clip_grad_norm_(self._clip_params, self.spec.grad_clip)
                    if self.scaler is None:
                        self.optimizer.step()
                    else:  # skips the step if a gradient overflowed, then adapts the scale
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    scheduler.step()
                    with torch.no_grad():
                        for i, name in enumerate(names):
                            if name in losses:
                                loss_sum[i] += losses[name].detach() * rows[name]
                                row_sum[i] += rows[name]
                    pos.step += 1
                    pos.global_step += 1
                    log_due = pos.step % self.spec.log_every == 0 or pos.step == steps_per_epoch
                    if log_due or bar.due(pos.step):  # `due` reads a clock, not the device
                        means = (loss_sum / row_sum.clamp_min(1)).tolist()  # one sync per log interval or progress line
                        # rank 0's rows times the ranks: the global rate, to a batch's rounding
                        bar.update(pos.step, samples * self.dist.world, dict(zip(names, means)))
                        if log_due:
                            self._tensorboard({f"train/{n}/loss": m for n, m in zip(names, means)}, pos.global_step)
                    if self.spec.checkpoint_every and pos.step % self.spec.checkpoint_every == 0 and pos.step < steps_per_epoch:
                        self._checkpoint(scheduler, pos, best_state, sums=(loss_sum, row_sum))
        except KeyboardInterrupt:
            self._checkpoint(scheduler, pos, best_state, sums=(loss_sum, row_sum), collective=False)
            raise
        if self.dist.enabled:  # global epoch means (DWA and the scheduled weights read them)
            distributed.all_reduce_sum_(loss_sum, row_sum)
        means = (loss_sum / row_sum.clamp_min(1)).tolist()
        self._epoch_losses = {n: m for n, m in zip(names, means)}
        return samples

    # -- precision and compilation -------------------------------------------------------------
    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def _call_model(self, batch: Batch) -> dict[str, Tensor]:
        # Task-aware models (one head per batch's task, e.g. NLP) are told which tasks it holds.
        args = (batch.inputs, batch.tasks) if self.model.task_aware else (batch.inputs,)
        return self._forward(*args)

    def _compile_settings(self):
        if self._forward is self.model:
            return contextlib.nullcontext()
        import torch._functorch.config as functorch_config

        # Gradient methods run several backward passes through one forward (retain_graph=True),
        # which a compiled backward that donates its buffers refuses; the flag is read at compile
        # and at backward time, so it holds for the whole training loop.
        return functorch_config.patch(donated_buffer=False)

    def _compile_now(self, step_batches: list[Batch]) -> None:
        """Compile (forward and backward) on the first step's batch before training, so that a
        failure falls back to eager with nothing to undo: the probe's gradients are dropped and
        the buffers (BatchNorm statistics) and RNG state it moved are restored."""
        self._compile_pending = False
        buffers = [b.detach().clone() for b in self.model.buffers()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            with self._autocast():
                logits = self._call_model(step_batches[0].to(self.device))
            total = torch.stack([v.float().sum() for v in logits.values()]).sum()
            if total.requires_grad:
                total.backward()
        except Exception as error:
            self._forward = self.model
            _compile_failed(error)
        finally:
            self.model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            self.model.task_penalties()  # drop the probe's (AITM keeps them until read)

    # -- model selection ----------------------------------------------------------------------
    def _select(self, results, pos: _Position, best_state) -> bool:
        improved_any = False
        state = None
        for unit, prefix in self.units.items():
            score = selection_score(results, self.tasks, self.spec.monitor) if unit == "model" else task_score(results, self._task(unit), self.spec.monitor)
            if math.isnan(score):
                score = float("-inf")
            if unit not in pos.best_score or score > pos.best_score[unit]:
                pos.best_score[unit], pos.best_epoch[unit], pos.stale_epochs[unit] = score, pos.epoch + 1, 0
                state = state if state is not None else self.model.state_dict()
                best_state.update({k: v.detach().clone() for k, v in state.items() if k.startswith(prefix)})
                for task in self.tasks:
                    if unit == "model" or unit == task.name:
                        pos.best_results[task.name] = dict(results[task.name])
                improved_any = True
            else:
                pos.stale_epochs[unit] = pos.stale_epochs.get(unit, 0) + 1
        if improved_any and self.run_dir is not None:
            atomic_save({"model": best_state, "best_epoch": dict(pos.best_epoch), "results": pos.best_results}, self.run_dir / "best.pt")
        return improved_any

    def _finished(self, pos: _Position) -> bool:
        if self.spec.patience is None or not pos.stale_epochs:
            return False
        return all(pos.stale_epochs.get(u, 0) >= self.spec.patience for u in self.units)

    def _task(self, name: str) -> TrainTask:
        return next(t for t in self.tasks if t.name == name)

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint(self, scheduler, pos: _Position, best_state, sums: tuple[Tensor, Tensor] | None = None,
                    collective: bool = True) -> None:
        if self.grad_monitor is not None:
            self.grad_monitor.flush()  # rows up to the checkpoint are on disk; a resumed run recomputes the rest
        if sums and self.dist.enabled and collective:  # the global mid-epoch sums (rank 0 resumes with them)
            sums = tuple(s.detach().clone() for s in sums)
            distributed.all_reduce_sum_(*sums)
        if self.run_dir is None:
            return
        atomic_save(
            {
                "version": CHECKPOINT_VERSION,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "balancer": self.balancer.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "position": pos.__dict__,
                "sums": [s.detach().cpu() for s in sums] if sums else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            },
            self.run_dir / "last.pt",
        )

    def _load(self, scheduler) -> tuple[_Position, dict[str, Tensor]]:
        run_dir = self._resume_dir
        assert run_dir is not None
        ckpt = load_checkpoint(run_dir / "last.pt", self.device, RESUME_HINT, keys=("version",))
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"{run_dir / 'last.pt'}: unsupported checkpoint version {ckpt.get('version')!r}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        self.balancer.load_state_dict(ckpt["balancer"])
        if self.scaler is not None and ckpt.get("scaler"):  # the loss scale reached, for an exact resume
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"].cpu())
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
        # Global sums: held by rank 0 alone, so that the epoch-end all-reduce counts them once.
        self._resumed_sums = ckpt["sums"] if self.dist.is_main else None
        pos = _Position(**ckpt["position"])
        best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if (run_dir / "best.pt").exists():
            best_state.update(load_checkpoint(run_dir / "best.pt", self.device, RESUME_HINT)["model"])
        return pos, best_state

    # -- logging -------------------------------------------------------------------------------
    def _rewrite_metric_files(self, history: list[dict[str, Any]]) -> None:
        if self.run_dir is None:
            return
        for name in ("metrics.jsonl", "metrics.csv"):
            (self.run_dir / name).unlink(missing_ok=True)
        for record in history:
            self._append_metrics(record, tensorboard=False)

    def _append_metrics(self, record: Mapping[str, Any], tensorboard: bool = True) -> None:
        if tensorboard:
            self._tensorboard({k: v for k, v in record.items() if k.startswith("val/")}, int(record["step"]))
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        csv_path = self.run_dir / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            if new:
                writer.writeheader()
            writer.writerow(record)

    def _tensorboard(self, values: Mapping[str, float], step: int) -> None:
        if not self.spec.tensorboard or self.run_dir is None:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard: install the extra `mtlkit[tensorboard]`") from None
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in values.items():
            self._tb.add_scalar(key, value, step)


def _check_precision_and_compile(spec: TrainSpec, precision: str, device: torch.device, balancer: Balancer) -> None:
    """Reject, before any work, the combinations that cannot train correctly (``precision``: resolved)."""
    name = next((n for n in BALANCERS.names() if BALANCERS.get(n) is type(balancer)), type(balancer).__name__)
    needs_features = balancer.needs_shared_features
    if precision != "fp32":
        if precision == "fp16" and device.type not in _FP16_DEVICES:
            raise ConfigError(f"train.precision: fp16 needs a CUDA device (training runs on {device.type}); use bf16")
        if device.type not in ("cpu", "cuda", *_FP16_DEVICES):
            raise ConfigError(f"train.precision: {precision} is supported on cpu and cuda, not {device.type}")
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision: this GPU has no bf16 support; use fp16")
        if needs_features:
            raise ConfigError(f"train.precision: {precision} with balancer {name!r}: its Jacobian w.r.t. the shared "
                              f"representation would be {precision}, not fp32; use 'mgda' (w.r.t. the fp32 shared parameters)")
    if precision == "fp16" and type(balancer).backward is not LossWeighting.backward:
        safe = name in _FP16_GRADIENT_METHODS and not (name == "mgda" and balancer.options.normalize != "none")
        if not safe:
            why = _FP16_UNSAFE.get(name, "it is not known to be exact under loss scaling")
            raise ConfigError(f"train.precision: fp16 with balancer {name!r} is unsafe: {why}; use bf16, a loss-weighting "
                              f"balancer or one of {', '.join(_FP16_GRADIENT_METHODS)}")
    if spec.compile:
        if needs_features:
            raise ConfigError(f"train.compile with balancer {name!r}: the shared representation it differentiates is "
                              "inside the compiled graph, so its gradients would be missing; use 'mgda' or compile: false")
        jacobian = balancer.options.jacobian if isinstance(balancer, GradientBalancer) else None
        if jacobian == "batched" or (jacobian == "auto" and device.type != "cpu"):
            raise ConfigError(f"train.compile with balancer {name!r}: its Jacobian is vmapped ('batched' on {device.type}), "
                              "which a compiled backward does not support; set the balancer option jacobian: loop")


def _compile_failed(error: Exception) -> None:
    root = error
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = inner  # Dynamo wraps the compiler's own error (BackendCompilerFailed)
    first = (str(root).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"train.compile: torch.compile failed ({type(root).__name__}: {first}); training without compilation",
                  RuntimeWarning, stacklevel=3)


def _print_epoch(record: Mapping[str, Any], results: Mapping[str, Mapping[str, float]]) -> None:
    from rich.console import Console

    parts = []
    for task, metrics in results.items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "rows")
        parts.append(f"[bold]{task}[/] {shown}")
    mark = " [green]*best[/]" if record["improved"] else ""
    Console().print(f"epoch {record['epoch']} validation: " + " | ".join(parts) + mark, highlight=False, soft_wrap=True)  # one line in a log file


__all__ = ["BatchSource", "Callback", "FitResult", "Trainer", "atomic_save"]
