"""Gradient diagnostics: per-task gradient norms and pairwise cosine similarity on the shared part.

Every ``every`` steps, the per-task gradients of the raw losses w.r.t. the shared parameters,
``g_k = ∇_{θ_sh} L_k`` (one batched backward, as in :mod:`mtlkit.balancing.gradient`), give

    norm_k = ‖g_k‖,        cos_ij = g_iᵀg_j / (‖g_i‖ ‖g_j‖)

A task absent from the step (or with no labelled row: zero gradient) gets an empty cell. Values
stay on the device until :meth:`GradientMonitor.flush` reads them back in one transfer (once per
epoch), appends them to ``gradients.csv`` (columns ``step``, ``norm/<task>``, ``cos/<a>/<b>``) and
redraws ``gradients.png`` (norms on a log scale; cosines, with conflicts below 0) from the whole
CSV, so a resumed run plots its full history. Works with any balancer and any model with
``shared_parameters()``; it costs one extra batched backward every ``every`` steps.

Two ways to use it:

* the trainer calls ``monitor.record(step, losses, model)`` just before ``balancer.backward`` (it
  keeps the graph) and ``monitor.flush()`` after each epoch and before saving a checkpoint;
* :class:`MonitoredBalancer` wraps any balancer, counts its own steps and flushes in
  ``epoch_end`` and whenever a checkpoint is saved — it works with the current trainer unchanged.
  Its state (the step counter and the wrapped balancer's state, under the prefix ``inner.``) is
  saved in checkpoints.

Example:
    >>> import torch
    >>> from mtlkit.protocols import TrainableModel
    >>> class Net(TrainableModel):
    ...     def __init__(self):
    ...         super().__init__(["a", "b"])
    ...         self.shared = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    ...     def shared_parameters(self):
    ...         return iter([self.shared])
    >>> net = Net()
    >>> losses = {"a": net.shared @ torch.tensor([3.0, 0.0]), "b": net.shared @ torch.tensor([-1.0, 1.0])}
    >>> norms, cosines = task_gradient_stats(losses, net, ["a", "b", "c"])
    >>> norms
    tensor([3.0000, 1.4142,    nan])
    >>> round(float(cosines[0, 1]), 4)                 # cos 135°: a conflict
    -0.7071
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtlkit.balancing.base import Balancer
from mtlkit.balancing.gradient import shared_jacobian, split_parameters
from mtlkit.nn.embedding_tables import sparse_weights
from mtlkit.protocols import TrainableModel
from mtlkit.train.callbacks import Callback
from mtlkit.train.spec import TrainSpec

if TYPE_CHECKING:
    from mtlkit.train.trainer import Trainer


def task_gradient_stats(losses: Mapping[str, Tensor], model: TrainableModel, task_names: Sequence[str],
                        jacobian: str = "auto") -> tuple[Tensor, Tensor]:
    """``(norms (T,), cosines (T, T))`` of the tasks' shared gradients; NaN for absent tasks. Keeps the graph."""
    t = len(task_names)
    shared, _ = split_parameters(model)
    rows = [i for i, name in enumerate(task_names) if name in losses and losses[name].requires_grad]
    reference = next(iter(losses.values()))
    norms = torch.full((t,), math.nan, device=reference.device)
    cosines = torch.full((t, t), math.nan, device=reference.device)
    # Sparse embedding tables count their touched rows only (mtlkit.balancing.touched_rows).
    outputs = [losses[task_names[i]] for i in rows]
    jac = shared_jacobian(outputs, shared, jacobian, sparse_weights(model))[0] if rows and shared else None
    if jac is None:
        return norms, cosines
    with torch.no_grad():
        gram = jac @ jac.T
        n = gram.diagonal().clamp_min(0).sqrt()
        present = n > 0
        cos = gram / (n[:, None] * n[None, :]).clamp_min(torch.finfo(gram.dtype).tiny)
        cos = torch.where(present[:, None] & present[None, :], cos.clamp(-1, 1), torch.full_like(cos, math.nan))
        index = torch.tensor(rows, device=norms.device)
        norms[index] = torch.where(present, n, torch.full_like(n, math.nan)).to(norms)
        cosines[index[:, None], index[None, :]] = cos.to(cosines)
    return norms, cosines


class GradientMonitor:
    """Records :func:`task_gradient_stats` every ``every`` steps; writes CSV and PNG on :meth:`flush`."""

    def __init__(self, task_names: Sequence[str], every: int = 100, out_dir: str | Path | None = None,
                 jacobian: str = "auto") -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.task_names = list(task_names)
        self.every = every
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.jacobian = jacobian
        self.pending: list[tuple[int, Tensor, Tensor]] = []
        self.rows: list[dict[str, Any]] = []  # flushed rows (this process)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        t = len(self.task_names)
        return [(i, j) for i in range(t) for j in range(i + 1, t)]

    @property
    def columns(self) -> list[str]:
        names = self.task_names
        return ["step", *[f"norm/{n}" for n in names], *[f"cos/{names[i]}/{names[j]}" for i, j in self.pairs]]

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def record(self, step: int, losses: Mapping[str, Tensor], model: TrainableModel) -> None:
        """Compute the statistics if ``step`` is due (call before the balancer's backward)."""
        if self.due(step) and losses:
            norms, cosines = task_gradient_stats(losses, model, self.task_names, self.jacobian)
            self.pending.append((step, norms, cosines))

    def flush(self) -> list[dict[str, Any]]:
        """Read the pending records back (one transfer), append them to the CSV and redraw the PNG."""
        if not self.pending:
            return []
        steps = [s for s, _, _ in self.pending]
        pair_index = torch.tensor(self.pairs, dtype=torch.long).reshape(-1, 2)
        values = torch.stack([torch.cat([n, c[pair_index[:, 0], pair_index[:, 1]]]) for _, n, c in self.pending]).tolist()
        self.pending = []
        new = [{"step": s, **{k: (None if math.isnan(v) else v) for k, v in zip(self.columns[1:], row)}}
               for s, row in zip(steps, values)]
        self.rows.extend(new)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / "gradients.csv"
            if path.exists():  # a resumed run recomputes the steps after its checkpoint: drop them first
                existing = read_gradient_csv(path)
                kept = [r for r in existing if r["step"] is not None and r["step"] < steps[0]]
                if len(kept) < len(existing):
                    path.unlink()
                    self._append(path, [{k: (int(v) if k == "step" and v is not None else v) for k, v in r.items()} for r in kept])
            self._append(path, new)
            plot_gradient_csv(path, self.out_dir / "gradients.png")
        return new

    def _append(self, path: Path, rows: list[dict[str, Any]]) -> None:
        fresh = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if fresh:
                writer.writeheader()
            writer.writerows(rows)


def read_gradient_csv(path: str | Path) -> list[dict[str, float | None]]:
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_gradient_csv(csv_path: str | Path, png_path: str | Path) -> Path:
    """Two panels over the steps: per-task gradient norms (log scale) and pairwise cosines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # (matplotlib only to plot)
    from matplotlib.figure import Figure

    rows = read_gradient_csv(csv_path)
    columns = list(rows[0]) if rows else []
    steps = [r["step"] for r in rows]
    figure = Figure(figsize=(9, 6.5))
    FigureCanvasAgg(figure)
    norm_ax, cos_ax = figure.subplots(2, 1, sharex=True)
    for column in columns:
        values = [r[column] if r[column] is not None else math.nan for r in rows]
        if column.startswith("norm/"):
            norm_ax.plot(steps, values, label=column[5:])
        elif column.startswith("cos/"):
            cos_ax.plot(steps, values, label=column[4:].replace("/", " · "))
    norm_ax.set_yscale("log")
    norm_ax.set_ylabel("‖∇ shared L_k‖")
    norm_ax.set_title("per-task gradient norms on the shared parameters")
    cos_ax.axhline(0.0, color="grey", linewidth=0.8)
    cos_ax.set_ylim(-1.05, 1.05)
    cos_ax.set_ylabel("cosine similarity")
    cos_ax.set_xlabel("step")
    for ax in (norm_ax, cos_ax):
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    return Path(png_path)


class GradientDiagnostics(Callback):
    """``train.grad_diagnostics_every``: the trainer's steps recorded by a :class:`GradientMonitor`,
    flushed to ``gradients.csv`` / ``gradients.png`` at every epoch end and before every checkpoint
    (so a resumed run recomputes only the steps after its checkpoint)."""

    def __init__(self, monitor: GradientMonitor) -> None:
        self.monitor = monitor

    def on_step_losses(self, trainer: Trainer, global_step: int, losses: Mapping[str, Tensor]) -> None:
        self.monitor.record(global_step, losses, trainer.model)

    def on_checkpoint(self, trainer: Trainer) -> None:
        self.monitor.flush()

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], validation: Any) -> None:
        self.monitor.flush()  # one read-back per epoch


def gradient_diagnostics(spec: TrainSpec, task_names: Sequence[str], out_dir: str | Path | None) -> list[Callback]:
    """The callbacks a run passes the trainer for ``train.grad_diagnostics_every`` (none when unset).

    ``out_dir``: where ``gradients.csv`` / ``.png`` go (None on data-parallel ranks other than 0).
    Under ``train.compile`` the Jacobian is per-task backwards: a vmapped one is not supported there.
    """
    if not spec.grad_diagnostics_every:
        return []
    monitor = GradientMonitor(task_names, spec.grad_diagnostics_every, out_dir, jacobian="loop" if spec.compile else "auto")
    return [GradientDiagnostics(monitor)]


class MonitoredBalancer(Balancer):
    """Any balancer, plus gradient diagnostics every ``monitor.every`` steps (flushed at epoch ends)."""

    def __init__(self, inner: Balancer, monitor: GradientMonitor) -> None:
        super().__init__(inner.task_names, inner.options, inner.loss_weights)
        self.inner = inner
        self.monitor = monitor
        self.steps = 0

    def backward(self, losses: Mapping[str, Tensor], model: TrainableModel) -> Tensor:
        self.monitor.record(self.steps, losses, model)
        self.steps += 1
        return self.inner.backward(losses, model)

    def epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        self.inner.epoch_end(epoch, mean_losses)
        self.monitor.flush()

    def current_weights(self) -> dict[str, float]:
        return self.inner.current_weights()

    def get_extra_state(self) -> Any:
        # A checkpoint is being saved (epoch end, every N steps, Ctrl-C): write the pending rows
        # now, so that a run resumed from it neither misses nor repeats any.
        self.monitor.flush()
        return {"steps": self.steps}

    def set_extra_state(self, state: Any) -> None:
        self.steps = int((state or {}).get("steps", 0))


__all__ = ["GradientMonitor", "MonitoredBalancer", "plot_gradient_csv", "read_gradient_csv", "task_gradient_stats"]
