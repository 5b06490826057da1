"""The training loop: steps, schedule, validation, early stopping, checkpoints, resumption.

One step takes a list of batches (one for a shared table, one per task for per-task datasets),
computes every present task's loss, hands them to the balancer for the backward pass, clips and
steps. Losses are accumulated on the device and read back only every ``log_every`` steps, when a
progress line is due (every ``log_every_seconds`` off a terminal: :mod:`mtlkit.train.progress`)
and at the end of an epoch. The trainer talks to the model through
:class:`~mtlkit.protocols.TrainableModel`'s hooks and to validation through an
:class:`~mtlkit.protocols.Evaluator`; diagnostics are :class:`~mtlkit.train.callbacks.Callback`\\ s
the run passes in.

Checkpoints (``last.pt``, :mod:`mtlkit.train.checkpoint`) hold the model, optimiser, scheduler and
balancer states, the RNG state, the position (epoch and step) and the history. Because the shuffle
order of an epoch is a function of the seed and the epoch number, resuming from a checkpoint —
saved at epoch ends, every ``checkpoint_every`` steps, or on Ctrl-C — continues with exactly the
batches and random draws the uninterrupted run would have seen. The best model (``best.pt``) is
chosen on the validation split only; an independent-task model (the single-task baseline) keeps
each task's best epoch separately.

The pieces a step is made of live in their own modules: the optimiser groups and the schedule
(:mod:`mtlkit.train.optim`), mixed precision and fp16 loss scaling
(:mod:`mtlkit.train.mixed_precision`; ``auto`` precision: :mod:`mtlkit.train.precision`),
``train.compile`` (:mod:`mtlkit.train.compile`), the metric files (:mod:`mtlkit.train.metrics_log`).
Evaluation runs in fp32 and eager: selection and test metrics are those of the model that export
and serving run.

Data-parallel training (``torchrun``; the design is in :mod:`mtlkit.train.distributed`): when a
``torch.distributed`` process group is initialised, the trainer broadcasts rank 0's weights, takes
rows ``rank::world`` of every global batch, averages the gradients over ranks after the balancer's
backward (a gradient method aggregates the rank-averaged task Jacobian), all-reduces the epoch
loss sums, evaluates the whole validation split on every rank, and only rank 0 writes files and
shows progress. Positions count global steps, so a checkpoint resumes with any number of ranks.

Example:
    >>> import torch
    >>> from mtlkit.data.batch import EncodedTable
    >>> from mtlkit.protocols import TrainableModel
    >>> from mtlkit.tasks import Task
    >>> from mtlkit.balancing import BalancerSpec, build_balancer
    >>> tasks = [Task(name="y", kind="regression")]
    >>> x = torch.randn(256, 1)
    >>> table = EncodedTable({"numeric": x}, {"y": 3 * x[:, 0]}, {"y": torch.ones(256, dtype=torch.bool)})
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

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from mtlkit.balancing import Balancer, GradientBalancer
from mtlkit.balancing.gradient import split_parameters
from mtlkit.data.batch import Batch, BatchSource, EncodedTable
from mtlkit.errors import ConfigError
from mtlkit.optim import EmbeddingOptimizerSpec, OptimizerSet, build_table_optimizers, clip_grad_norm_
from mtlkit.protocols import Evaluator, TrainableModel, TrainTask
from mtlkit.train import distributed
from mtlkit.train.callbacks import Callback, FitResult
from mtlkit.train.checkpoint import CHECKPOINT_VERSION, atomic_save, load_checkpoint
from mtlkit.train.compile import CompiledForward
from mtlkit.train.device import resolve_device
from mtlkit.train.evaluate import TableEvaluator, flatten_metrics
from mtlkit.train.metrics_log import MetricsLog
from mtlkit.train.mixed_precision import MixedPrecision, check_precision_and_compile
from mtlkit.train.optim import dense_optimizer, lr_schedule, parameter_groups
from mtlkit.train.precision import resolve_precision
from mtlkit.train.progress import epoch_progress, print_epoch
from mtlkit.train.selection import check_monitor, selection_score, task_score
from mtlkit.train.spec import TrainSpec

if TYPE_CHECKING:
    from mtlkit.tasks import Task

RESUME_HINT = "to start the run again instead of resuming it, pass --overwrite"


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


@dataclass
class _EpochSums:
    """Per-task running loss and row sums of an epoch, on the device (read back only when logged)."""

    loss: Tensor
    rows: Tensor

    def add(self, names: Sequence[str], losses: Mapping[str, Tensor], rows: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for i, name in enumerate(names):
                if name in losses:
                    self.loss[i] += losses[name].detach() * rows[name]
                    self.rows[i] += rows[name]

    def means(self, names: Sequence[str]) -> dict[str, float]:
        return dict(zip(names, (self.loss / self.rows.clamp_min(1)).tolist()))  # one device sync


class Trainer:
    def __init__(
        self,
        model: TrainableModel,
        tasks: Sequence[TrainTask],
        balancer: Balancer,
        spec: TrainSpec,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        embedding_optimizer: EmbeddingOptimizerSpec | None = None,
        table_fields: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(model, TrainableModel):
            raise TypeError(f"the trainer trains a mtlkit.protocols.TrainableModel, got {type(model).__name__}")
        check_monitor(spec.monitor, tasks)
        self.model, self.tasks, self.balancer, self.spec = model, list(tasks), balancer, spec
        # ESMM's CVR is predicted and evaluated but trained only through CTCVR: no loss of its own.
        self.loss_task_names = model.loss_task_names
        if list(balancer.task_names) != self.loss_task_names:
            raise ConfigError(f"the balancer weighs tasks {balancer.task_names} but the model trains "
                              f"{self.loss_task_names}: build it for model.loss_task_names")
        # Data-parallel: every rank reads a checkpoint from `_resume_dir`; only rank 0 writes and shows progress.
        self.dist = distributed.context()
        self._resume_dir = Path(run_dir) if run_dir is not None else None
        self.run_dir = self._resume_dir if self.dist.is_main else None
        self._show_progress = spec.progress and self.dist.is_main
        self.metrics_log = MetricsLog(self.run_dir, spec.tensorboard)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.callbacks = list(callbacks)
        self.device = resolve_device(spec.device)
        # "auto": bf16 where the hardware runs it natively and the balancer trains in it, else fp32
        self.precision = resolve_precision(spec.precision, self.device, not balancer.needs_shared_features)
        check_precision_and_compile(spec, self.precision, self.device, balancer)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.model.to(self.device)
        self.balancer.to(self.device)
        self.optimizers = self._build_optimizers(embedding_optimizer, table_fields)
        self._reduce_params, self._exchange_tables = self._data_parallel_setup()
        self._clip_params = self.optimizers.dense_parameters + self.optimizers.table_parameters  # fixed: built once
        self.independent = model.independent_tasks
        # Selection units: one per task for independent networks, else one for the whole model.
        self.units = {t.name: model.task_state_prefix(t.name) for t in tasks} if self.independent else {"model": ""}
        # Representation-level balancers (MGDA-UB) read the shared features of the step's forwards.
        self._keep_features = balancer.needs_shared_features
        model.keep_shared_features = self._keep_features
        self.amp = MixedPrecision(self.precision, self.device, balancer)
        self.forward = CompiledForward(model, spec.compile)
        self._resumed_sums: list[Tensor] | None = None  # a mid-epoch checkpoint's sums, for the next epoch
        self._epoch_losses: dict[str, float] = {}

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The fused Adam/AdamW of the dense parameters (the tables' own optimisers: ``optimizers.tables``)."""
        return self.optimizers.dense

    def _build_optimizers(self, embedding_optimizer: EmbeddingOptimizerSpec | None, table_fields: Sequence[str] | None) -> OptimizerSet:
        """Row-wise optimisers for the embedding tables (``model.embedding_optimizer``; none: dense
        tables), the fused Adam/AdamW of the trainer for every other parameter and the balancer's."""
        tables = build_table_optimizers(self.model, embedding_optimizer, table_fields) if embedding_optimizer is not None else []
        table_params = OptimizerSet(None, tables).table_parameters
        groups = parameter_groups(self.model, self.spec, extra=self.balancer.parameters(), exclude=table_params)
        return OptimizerSet(dense_optimizer(groups, self.spec) if groups else None, tables)

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16's gradient scaler (None in other precisions)."""
        return self.amp.scaler

    def _data_parallel_setup(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Under torchrun: rank 0's weights everywhere; the parameters whose dense gradients are
        all-reduced, and the sparse tables whose touched rows are all-gathered, after each backward."""
        if not self.dist.enabled:
            return [], []
        distributed.broadcast_state(self.model, self.balancer)
        tables = self.optimizers.table_parameters
        skip = {id(p) for p in tables}  # sparse gradients: exchanged as (row ids, rows), never densified
        if isinstance(self.balancer, GradientBalancer):  # aggregates the rank-averaged Jacobian
            distributed.reduce_gradient_balancer(self.balancer, self.dist.world)
            # The shared gradients of a gradient method are equal on every rank already.
            skip |= {id(p) for p in split_parameters(self.model)[0]}
        dense = [p for p in [*self.model.parameters(), *self.balancer.parameters()] if p.requires_grad and id(p) not in skip]
        return dense, distributed.sparse_exchange_parameters(tables, self.balancer)

    # -- public API -------------------------------------------------------------------------
    def fit(self, train: BatchSource, validation: EncodedTable | Evaluator, resume: bool = True) -> FitResult:
        train = distributed.shard_source(train, self.dist)  # rank r's rows of each global batch
        steps_per_epoch = len(train)
        # one schedule for the dense and the table optimisers (warm-up and decay scale every learning rate)
        scheduler = self.optimizers.schedulers(lr_schedule(self.spec, self.spec.epochs * steps_per_epoch))
        # a labelled table (of tabular Tasks), or an evaluator of its own (e.g. per-task NLP splits)
        evaluator = (TableEvaluator(cast("list[Task]", self.tasks), validation, self.spec.eval_batch_size)
                     if isinstance(validation, EncodedTable) else validation)
        pos = _Position()
        best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self._resuming(resume):
            pos, best_state = self._load(scheduler)
        self.metrics_log.rewrite(pos.history)
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
            record = self._epoch_record(results, pos, scheduler, self._select(results, pos, best_state))
            for callback in self.callbacks:
                callback.on_epoch_end(self, record, validation)
            pos.history.append(record)
            if self._show_progress:
                print_epoch(record, results)
            self.balancer.epoch_end(pos.epoch, self._epoch_losses)
            pos.epoch, pos.step = pos.epoch + 1, 0
            self.metrics_log.append(record)
            stopped_early = self._finished(pos)
            self._checkpoint(scheduler, pos)
        self.model.load_state_dict(best_state)
        if self.dist.enabled:  # rows trained by all ranks
            total = torch.tensor([float(samples)], dtype=torch.float64, device=self.device)
            distributed.all_reduce_sum_(total)
            samples = int(total.item())
        self.metrics_log.close()
        result = FitResult(pos.history, dict(pos.best_epoch), pos.best_results, stopped_early and pos.epoch < self.spec.epochs,
                           time.perf_counter() - start, samples, train_seconds, self.precision)
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    def _resuming(self, resume: bool) -> bool:
        found = resume and self._resume_dir is not None and (self._resume_dir / "last.pt").exists()
        if self.dist.enabled:  # every rank resumes from rank 0's last.pt, or none does
            flags = torch.tensor([float(found), 1.0 - float(found)], device=self.device)  # NCCL: device tensors
            distributed.all_reduce_sum_(flags)
            if 0 < flags[0] < self.dist.world:
                raise ConfigError(f"{self._resume_dir}: last.pt is visible on {int(flags[0])} of {self.dist.world} ranks; "
                                  "distributed training needs the run directory on a shared file system")
        return found

    def _epoch_record(self, results: dict[str, dict[str, float]], pos: _Position, scheduler: Any, improved: bool) -> dict[str, Any]:
        return {
            "epoch": pos.epoch + 1,
            "step": pos.global_step,
            "lr": scheduler.get_last_lr()[0],
            **{f"train/{k}/loss": v for k, v in self._epoch_losses.items()},
            **flatten_metrics(results, "val"),
            "score": selection_score(results, self.tasks, self.spec.monitor),
            "improved": improved,
        }

    # -- one epoch ---------------------------------------------------------------------------
    def _train_epoch(self, train: BatchSource, scheduler: Any, pos: _Position, steps_per_epoch: int, best_state: dict) -> int:
        self.model.train()
        names = self.loss_task_names
        by_name = {t.name: t for t in self.tasks if t.name in names}
        saved, self._resumed_sums = self._resumed_sums, None
        sums = _EpochSums(*(s.to(self.device) for s in saved)) if saved else \
            _EpochSums(torch.zeros(len(names), device=self.device), torch.zeros(len(names), device=self.device))
        samples = 0
        progress = epoch_progress(self._show_progress, pos.epoch, self.spec.epochs, steps_per_epoch, pos.step,
                                  self.spec.log_every_seconds)
        try:
            with progress as bar, self.forward.settings():
                for step_batches in train.epoch(pos.epoch, pos.step):
                    # the fraction of training done (annealed GRL): a function of the global step, so it resumes exactly
                    self.model.set_training_progress(pos.global_step / (self.spec.epochs * steps_per_epoch))
                    if self.forward.pending:
                        self._compile_now(step_batches[0])
                    losses, rows, batch_rows = self._losses(step_batches, by_name)
                    samples += batch_rows
                    # Data-parallel: each rank's mean loss re-weighted by its share of the task's
                    # labelled rows, so that the rank average is the global batch's mean loss.
                    self._update(distributed.global_mean_losses(losses, rows, self.dist.world) if self.dist.enabled else losses,
                                 pos.global_step)
                    scheduler.step()
                    sums.add(names, losses, rows)
                    pos.step += 1
                    pos.global_step += 1
                    log_due = pos.step % self.spec.log_every == 0 or pos.step == steps_per_epoch
                    if log_due or bar.due(pos.step):  # `due` reads a clock, not the device
                        means = sums.means(names)
                        # rank 0's rows times the ranks: the global rate, to a batch's rounding
                        bar.update(pos.step, samples * self.dist.world, means)
                        if log_due:
                            self.metrics_log.scalars({f"train/{n}/loss": m for n, m in means.items()}, pos.global_step)
                    if self.spec.checkpoint_every and pos.step % self.spec.checkpoint_every == 0 and pos.step < steps_per_epoch:
                        self._checkpoint(scheduler, pos, sums=sums)
        except KeyboardInterrupt:
            self._checkpoint(scheduler, pos, sums=sums, collective=False)
            raise
        if self.dist.enabled:  # global epoch means (DWA and the scheduled weights read them)
            distributed.all_reduce_sum_(sums.loss, sums.rows)
        self._epoch_losses = sums.means(names)
        return samples

    def _losses(self, step_batches: list[Batch], by_name: Mapping[str, TrainTask]) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
        """The step's forwards: each present task's loss, its labelled row count, and the rows seen."""
        losses: dict[str, Tensor] = {}
        rows: dict[str, Tensor] = {}
        features: list[Any] = []
        samples = 0
        for batch in step_batches:
            batch = batch.to(self.device)
            samples += batch.size
            with self.amp.autocast():
                logits = self._call_model(batch)
                if self._keep_features:
                    features.append(self.model.last_shared_features)
                own = self.model.relation_losses(logits, batch.targets, batch.masks)  # ESCM², DCMT: over the whole batch
                for name, value in own.items():
                    if name in by_name:
                        losses[name] = value.float()
                        rows[name] = torch.full((), batch.size, dtype=torch.long, device=value.device)
                for name in batch.tasks:
                    if name not in by_name or name in own:
                        continue
                    weight, mask = batch.weights.get(name), batch.masks[name]
                    # fp32 losses from low-precision logits (a no-op in fp32): loss sums, logged
                    # values and the balancers' Jacobians stay fp32.
                    group = {"group": batch.groups[name]} if name in batch.groups else {}  # ranking losses
                    losses[name] = by_name[name].compute_loss(logits[name].float(), batch.targets[name], weight, mask, **group)
                    rows[name] = mask.sum()
                for name, penalty in self.model.task_penalties().items():  # AITM's calibrator: part of its task's objective
                    if name in losses:
                        losses[name] = losses[name] + penalty.float()
                for name, loss in self.model.auxiliary_losses().items():  # self-supervised tasks (DIEN's aux loss, sequence LMs)
                    count = torch.full((), batch.size, dtype=torch.long, device=self.device)
                    if name in losses:  # several forwards in a step: their row-weighted mean
                        total = rows[name] + count
                        losses[name] = (losses[name] * rows[name] + loss.float() * count) / total
                        rows[name] = total
                    else:
                        losses[name], rows[name] = loss.float(), count
        if self._keep_features:  # every forward of the step, not only the last one
            self.model.last_shared_features = features[0] if len(features) == 1 else features
        return losses, rows, samples

    def _update(self, losses: dict[str, Tensor], global_step: int) -> None:
        """Backward through the balancer, average over ranks, clip, step."""
        self.optimizers.zero_grad(set_to_none=True)
        for callback in self.callbacks:
            callback.on_step_losses(self, global_step, losses)
        self.amp.backward(self.balancer, losses, self.model)
        self.amp.backward_penalty(self.model.regularization_loss())
        if self.dist.enabled:  # average over ranks before clipping, unscaling and the step
            distributed.all_reduce_grads(self._reduce_params, self.dist.world)
            distributed.all_gather_sparse_grads(self._exchange_tables, self.dist.world)
        if self.spec.grad_clip:
            self.amp.unscale_(self.optimizers.optimizers)  # the threshold is in true gradient units
            clip_grad_norm_(self._clip_params, self.spec.grad_clip)  # one norm over dense and touched table rows
        self.amp.step(self.optimizers.optimizers)

    def _call_model(self, batch: Batch) -> dict[str, Tensor]:
        # Task-aware models (one head per batch's task, e.g. NLP) are told which tasks it holds.
        args = (batch.inputs, batch.tasks) if self.model.task_aware else (batch.inputs,)
        return self.forward(*args)

    def _compile_now(self, batch: Batch) -> None:
        def probe() -> dict[str, Tensor]:
            with self.amp.autocast():
                return self._call_model(batch.to(self.device))

        self.forward.compile_now(probe)
        self.model.task_penalties()  # drop the probe's (AITM keeps them until read)
        self.model.auxiliary_losses()

    # -- model selection ----------------------------------------------------------------------
    def _select(self, results: dict[str, dict[str, float]], pos: _Position, best_state: dict) -> bool:
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
    def _checkpoint(self, scheduler: Any, pos: _Position, sums: _EpochSums | None = None, collective: bool = True) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(self)  # e.g. gradient rows up to here on disk; a resumed run recomputes the rest
        saved = [sums.loss.detach().clone(), sums.rows.detach().clone()] if sums is not None else None
        if saved and self.dist.enabled and collective:  # the global mid-epoch sums (rank 0 resumes with them)
            distributed.all_reduce_sum_(*saved)
        if self.run_dir is None:
            return
        atomic_save(
            {
                "version": CHECKPOINT_VERSION,
                "model": self.model.state_dict(),
                "optimizer": self.optimizers.state_dict(),
                "scheduler": scheduler.state_dict(),
                "balancer": self.balancer.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "position": pos.__dict__,
                "sums": [s.cpu() for s in saved] if saved else None,
                "scaler": self.amp.state_dict(),
            },
            self.run_dir / "last.pt",
        )

    def _load(self, scheduler: Any) -> tuple[_Position, dict[str, Tensor]]:
        run_dir = self._resume_dir
        assert run_dir is not None
        ckpt = load_checkpoint(run_dir / "last.pt", self.device, RESUME_HINT, keys=("version",))
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"{run_dir / 'last.pt'}: unsupported checkpoint version {ckpt.get('version')!r}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizers.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        self.balancer.load_state_dict(ckpt["balancer"])
        self.amp.load_state_dict(ckpt.get("scaler"))
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


__all__ = ["BatchSource", "Callback", "FitResult", "RESUME_HINT", "Trainer"]
