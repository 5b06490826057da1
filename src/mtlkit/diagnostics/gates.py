"""Gate diagnostics: how mixture-of-experts gates spread their weight over the experts.

For a model with gates (:meth:`~mtlkit.protocols.TrainableModel.gate_weights` ``-> {gate: (B,
experts)}``: MMoE, OMoE, YouTube-MMoE, DSelect-k, CGC, PLE, and NLP runs mixing with them), :func:`gate_statistics` reports per gate, over the rows of
an :class:`~mtlkit.data.batch.EncodedTable` and in evaluation mode:

* the mean weight of every expert — a gate that routes everything to one expert is
  *polarised* (Zhao et al., RecSys 2019, §4.3; Tang et al., RecSys 2020, §5.3);
* the mean per-row entropy ``−Σ_e g_e log g_e`` in nats (0: one expert; ``log E``: uniform);
* the share of experts whose mean weight is below ``threshold`` (1%): collapsed experts.

:func:`write_gate_csv` and :func:`plot_gate_heatmap` write them out; :class:`GateDiagnostics`
logs entropy and collapse every epoch and writes ``gates.csv`` / ``gates.png`` at the end of a
run.

Example:
    >>> import torch
    >>> from mtlkit.data.batch import EncodedTable
    >>> from mtlkit.models import MultiTaskModel
    >>> from mtlkit.models.mmoe import MMoE
    >>> from mtlkit.nn import TabularEncoder
    >>> from mtlkit.tasks import Task
    >>> tasks = [Task(name="a", kind="binary"), Task(name="b", kind="regression")]
    >>> encoder = TabularEncoder([], numeric_dim=3, embedding_dim=2)
    >>> model = MultiTaskModel(encoder, MMoE(3, ["a", "b"], MMoE.Options(experts=4, expert_hidden=[8])), tasks)
    >>> table = EncodedTable({"numeric": torch.randn(50, 3)}, {"a": torch.zeros(50), "b": torch.zeros(50)},
    ...                      {"a": torch.ones(50, dtype=torch.bool), "b": torch.ones(50, dtype=torch.bool)})
    >>> stats = gate_statistics(model, table)
    >>> sorted(stats), stats["a"].experts
    (['a', 'b'], ['expert0', 'expert1', 'expert2', 'expert3'])
    >>> abs(sum(stats["a"].mean_weight) - 1.0) < 1e-5, 0.0 <= stats["a"].mean_entropy <= 1.3863
    (True, True)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtlkit.data.batch import EncodedTable
from mtlkit.protocols import TrainableModel
from mtlkit.train.callbacks import Callback, FitResult

if TYPE_CHECKING:
    from mtlkit.train.trainer import Trainer


@dataclass(frozen=True)
class GateStats:
    gate: str
    experts: list[str]
    mean_weight: list[float]
    mean_entropy: float
    collapsed_share: float  # share of experts whose mean weight is below the threshold
    threshold: float

    @property
    def collapsed(self) -> list[str]:
        return [e for e, w in zip(self.experts, self.mean_weight) if w < self.threshold]


def has_gates(model: TrainableModel) -> bool:
    """Whether the model mixes experts through gates (names the experts of at least one gate)."""
    return bool(model.gate_experts())


def _check_gated(model: nn.Module) -> TrainableModel:
    if not isinstance(model, TrainableModel):
        raise TypeError(f"gate diagnostics need a TrainableModel, got {type(model).__name__}")
    if not has_gates(model):
        raise TypeError(f"{type(model).__name__} has no gates (its backbone names no gate experts)")
    return model


@torch.no_grad()
def gate_statistics(
    model: nn.Module,
    table: EncodedTable,
    batch_size: int = 8192,
    threshold: float = 0.01,
    max_rows: int | None = None,
) -> dict[str, GateStats]:
    """Per-gate mean weights, mean entropy and collapsed share over ``table`` (first ``max_rows`` rows)."""
    model = _check_gated(model)
    if len(table) == 0:
        raise ValueError("gate statistics need at least one row")
    if max_rows is not None and max_rows < len(table):
        table = table.subset(torch.arange(max_rows))
    device = next(model.parameters()).device
    weight_sums: dict[str, Tensor] = {}
    entropy_sums: dict[str, Tensor] = {}
    was_training = model.training
    model.eval()  # no gate dropout, no code sampling: the gates a served model uses
    try:
        for step in table.batches(batch_size).epoch():
            for batch in step:
                for gate, w in model.gate_weights(batch.to(device).inputs).items():
                    w = w.double()  # sums over many rows
                    weight_sums[gate] = weight_sums.get(gate, 0) + w.sum(0)
                    entropy_sums[gate] = entropy_sums.get(gate, 0) + torch.special.entr(w).sum()
    finally:
        model.train(was_training)
    rows = len(table)
    labels = model.gate_experts()
    stats = {}
    for gate, total in weight_sums.items():
        mean = (total / rows).cpu().tolist()  # one transfer per gate, after the loop
        experts = labels.get(gate) or [f"expert{e}" for e in range(len(mean))]
        below = sum(w < threshold for w in mean)
        stats[gate] = GateStats(gate, list(experts), mean, float(entropy_sums[gate]) / rows, below / len(mean), threshold)
    return stats


def write_gate_csv(stats: Mapping[str, GateStats], path: str | Path) -> Path:
    """One row per (gate, expert): mean weight, whether it is collapsed, and the gate's entropy and collapse share."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gate", "expert", "mean_weight", "collapsed", "gate_mean_entropy", "gate_collapsed_share"])
        for s in stats.values():
            for expert, weight in zip(s.experts, s.mean_weight):
                collapsed = int(weight < s.threshold)
                writer.writerow([s.gate, expert, f"{weight:.6g}", collapsed, f"{s.mean_entropy:.6g}", f"{s.collapsed_share:.6g}"])
    return path


def plot_gate_heatmap(stats: Mapping[str, GateStats], path: str | Path, title: str = "mean gate weight") -> Path:
    """A gates × experts heatmap of mean weights (blank where a gate does not see an expert), as PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gates = list(stats)
    experts = list(dict.fromkeys(e for s in stats.values() for e in s.experts))  # union, first-seen order
    grid = np.full((len(gates), len(experts)), np.nan)
    for i, s in enumerate(stats.values()):
        for expert, weight in zip(s.experts, s.mean_weight):
            grid[i, experts.index(expert)] = weight
    # No pyplot: a bare Agg canvas leaves the caller's matplotlib backend and state alone.
    fig = Figure(figsize=(1.2 + 0.7 * len(experts), 1.0 + 0.45 * len(gates)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(experts)), experts, rotation=45, ha="right")
    ax.set_yticks(range(len(gates)), [f"{g} (H={stats[g].mean_entropy:.2f})" for g in gates])
    if grid.size <= 400:  # numbers stay readable on small grids only
        for (i, j), value in np.ndenumerate(grid):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w" if value < 0.6 else "k")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


class GateDiagnostics(Callback):
    """Adds ``gates/<gate>/entropy`` and ``gates/<gate>/collapsed`` to every epoch record and, when the
    trainer has a ``run_dir``, writes ``gates.csv`` and ``gates.png`` for the final (best) model.

    Statistics use the validation table (its first ``max_rows`` rows, to keep epochs cheap). Pass
    ``model`` to check up front that its backbone has gates, rather than after the first epoch.
    """

    def __init__(self, model: nn.Module | None = None, max_rows: int | None = 10_000, threshold: float = 0.01,
                 batch_size: int = 8192) -> None:
        if model is not None:
            _check_gated(model)
        self.max_rows, self.threshold, self.batch_size = max_rows, threshold, batch_size
        self._validation: EncodedTable | None = None
        self.last: dict[str, GateStats] = {}

    def _stats(self, model: nn.Module, table: EncodedTable) -> dict[str, GateStats]:
        self.last = gate_statistics(model, table, self.batch_size, self.threshold, self.max_rows)
        return self.last

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], validation: EncodedTable) -> None:
        self._validation = validation
        for gate, s in self._stats(trainer.model, validation).items():
            record[f"gates/{gate}/entropy"] = s.mean_entropy
            record[f"gates/{gate}/collapsed"] = s.collapsed_share

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        if trainer.run_dir is None or self._validation is None:
            return
        stats = self._stats(trainer.model, self._validation)  # the model now holds the best weights
        write_gate_csv(stats, trainer.run_dir / "gates.csv")
        plot_gate_heatmap(stats, trainer.run_dir / "gates.png")
