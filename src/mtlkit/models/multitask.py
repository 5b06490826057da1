"""The assembled model: input encoder → backbone → one tower and head per task.

``forward`` maps a batch's ``inputs`` to ``{task: logits}`` (``(B,)`` for binary and regression
tasks, ``(B, C)`` for multiclass). :meth:`MultiTaskModel.shared_parameters` is what gradient
balancers treat as the shared part; towers are task-specific.

Example:
    >>> import torch
    >>> from mtlkit.tasks import Task
    >>> from mtlkit.nn import TabularEncoder
    >>> from mtlkit.models.shared_bottom import SharedBottom
    >>> tasks = [Task(name="click", kind="binary"), Task(name="topic", kind="multiclass", n_classes=3)]
    >>> encoder = TabularEncoder([4], numeric_dim=2, embedding_dim=3)
    >>> backbone = SharedBottom(encoder.output_dim, [t.name for t in tasks], SharedBottom.Options(hidden=[8]))
    >>> model = MultiTaskModel(encoder, backbone, tasks, tower_hidden=[4])
    >>> out = model({"categorical": torch.tensor([[1]]), "numeric": torch.zeros(1, 2)})
    >>> out["click"].shape, out["topic"].shape
    (torch.Size([1]), torch.Size([1, 3]))
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.models.base import Backbone
from mtlkit.nn import MLP
from mtlkit.tasks import Task


class TaskHead(nn.Module):
    """A task's tower MLP followed by the linear output layer."""

    def __init__(self, input_dim: int, task: Task, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.tower = MLP(input_dim, hidden, dropout=dropout)
        self.output = nn.Linear(self.tower.output_dim, task.output_dim)
        self.squeeze = task.output_dim == 1

    def forward(self, x: Tensor) -> Tensor:
        logits = self.output(self.tower(x))
        return logits.squeeze(-1) if self.squeeze else logits


class MultiTaskModel(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        backbone: Backbone,
        tasks: Sequence[Task],
        tower_hidden: Sequence[int] = (),
        tower_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = backbone
        self.task_names = [t.name for t in tasks]
        self.heads = nn.ModuleDict(
            {t.name: TaskHead(backbone.output_dim, t, tower_hidden, tower_dropout) for t in tasks}
        )

    #: Set by the trainer for representation-level balancers (MGDA-UB): keep, as
    #: ``last_shared_features``, the representation every task reads, at each forward with gradients.
    keep_shared_features: bool = False

    def representations(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The backbone's per-task representations (what MGDA-UB-style methods differentiate)."""
        encoded = self.encoder(inputs)
        reps = self.backbone(encoded)
        if self.keep_shared_features and torch.is_grad_enabled():
            # The backbone's own shared tensor if it names one (e.g. MoE expert outputs), else the
            # one tensor all tasks read (shared-bottom), else the encoder output.
            shared = getattr(self.backbone, "last_shared_features", None)
            distinct = {id(r): r for r in reps.values()}
            self.last_shared_features = shared if shared is not None else (
                next(iter(distinct.values())) if len(distinct) == 1 else encoded)
        return reps

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        reps = self.representations(inputs)
        return {name: self.heads[name](reps[name]) for name in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.backbone.parameters()

    def regularization_loss(self) -> Tensor | None:
        """The backbone's own penalty (SNR: λ·E[L0]), added to the training loss; None if it has none."""
        penalty = getattr(self.backbone, "regularization_loss", None)
        return penalty() if callable(penalty) else None

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.heads[task].parameters()


class IndependentTaskModels(nn.Module):
    """One complete :class:`MultiTaskModel` per task, sharing nothing (the single-task baseline)."""

    independent_tasks = True

    def __init__(self, models: Mapping[str, MultiTaskModel]) -> None:
        super().__init__()
        self.per_task = nn.ModuleDict(dict(models))
        self.task_names = list(models)

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.per_task[name](inputs)[name] for name in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def regularization_loss(self) -> Tensor | None:
        terms = [p for m in self.per_task.values() if (p := m.regularization_loss()) is not None]
        return torch.stack(terms).sum() if terms else None

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.per_task[task].parameters()

    def task_state_prefix(self, task: str) -> str:
        """State-dict prefix of a task's network (for per-task model selection)."""
        return f"per_task.{task}."
