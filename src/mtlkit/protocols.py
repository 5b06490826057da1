"""The named contracts between the trainer, the run pipeline, export, serving and what they train.

Three contracts, each with explicit do-nothing defaults so that a model family implements only
what it has — and a misspelled hook fails loudly instead of disappearing:

- :class:`TrainableModel`, the base class of every model family (:class:`~mtlkit.models.MultiTaskModel`,
  :class:`~mtlkit.models.IndependentTaskModels`, :class:`~mtlkit.nlp.model.NLPMultiTaskModel`).
  ``forward(inputs)`` (or ``forward(inputs, tasks)`` when :attr:`~TrainableModel.task_aware`) maps
  a batch to ``{task: outputs}``; the hooks below say what the trainer, the balancers, export and
  serving need to know beyond that.
- :class:`TrainTask`, what the trainer and model selection read of a task: the tabular
  :class:`~mtlkit.tasks.Task` and every NLP task kind (:class:`~mtlkit.nlp.base.NLPTask`) satisfy it.
- :class:`Evaluator`, validation: ``evaluate(model, device) -> {task: {metric: value}}``, the same
  for a tabular split (:class:`~mtlkit.train.evaluate.TableEvaluator`) and per-task NLP splits.

Models to learn from, written our own way: LibMTL's ``AbsArchitecture`` (the model contract named
in one place) without its dynamic multiple inheritance, and torchjd's aggregator bases (one
abstract base, checked once).

Example:
    >>> import torch
    >>> class Linear(TrainableModel):
    ...     def __init__(self):
    ...         super().__init__(["y"])
    ...         self.w = torch.nn.Linear(2, 1)
    ...     def forward(self, inputs):
    ...         return {"y": self.w(inputs["numeric"]).squeeze(-1)}
    >>> model = Linear()
    >>> model.loss_task_names, model.task_penalties(), model.regularization_loss(), model.auxiliary_losses()
    (['y'], {}, None, {})
    >>> len(list(model.shared_parameters())), model.gate_weights({}) == {}
    (2, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # models import this module: a type-only import keeps the graph acyclic
    from mtlkit.models.fusion import FusionSpec


class TrainableModel(nn.Module):
    """A model the trainer can train, select, checkpoint, export and serve.

    Subclasses set :attr:`task_names` (the tasks ``forward`` predicts) and override the hooks they
    have. The hooks are methods, never attributes looked up by name, so that a model that does not
    override one gets its documented default.
    """

    #: ``forward(inputs, tasks)``: the batch's task names are passed and only their heads run (NLP).
    task_aware: ClassVar[bool] = False
    #: Every task has a network of its own (the single-task baseline): model selection per task,
    #: through :meth:`task_state_prefix`.
    independent_tasks: ClassVar[bool] = False

    #: The serving score of ``model.fusion`` (:mod:`mtlkit.models.fusion`); None without one.
    fusion: FusionSpec | None = None
    #: Set by the trainer for representation-level balancers (MGDA-UB): the model then keeps, in
    #: :attr:`last_shared_features`, the representation every task reads, at each forward with gradients.
    keep_shared_features: bool = False
    last_shared_features: Tensor | list[Tensor] | None = None

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        self.task_names = list(task_names)

    # -- losses ------------------------------------------------------------------------------
    @property
    def loss_task_names(self) -> list[str]:
        """Tasks trained by a loss of their own: what the balancer weighs (ESMM's CVR has none), then
        the model's :meth:`auxiliary_tasks`."""
        return [*self.task_names, *(t.name for t in self.auxiliary_tasks())]

    def auxiliary_tasks(self) -> list[AuxiliaryTask]:
        """Self-supervised objectives the model computes from its own inputs (DIEN's auxiliary loss,
        sequence language models): tasks the balancer weighs next to the labelled ones, with a loss
        weight each, trained only (no label column, no validation metric)."""
        return []

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """The :meth:`auxiliary_tasks`' losses of the last training forward, by name (cleared when read;
        empty in eval mode)."""
        return {}

    def task_penalties(self) -> dict[str, Tensor]:
        """Extra loss terms of the last forward, per task (AITM's calibrator), added to that task's loss."""
        return {}

    def relation_losses(self, logits: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                        masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Task losses the model computes itself from the last forward's logits and the batch's labels
        (ESCM²'s counterfactual risk, DCMT's twin-tower loss); they replace those tasks' own losses."""
        return {}

    def regularization_loss(self) -> Tensor | None:
        """A penalty on the parameters (SNR's λ·E[L0]) added to the training loss outside the balancer."""
        return None

    def set_training_progress(self, fraction: float) -> None:
        """Hears the fraction of training done before each step (annealed gradient reversal)."""

    # -- parameter groups ----------------------------------------------------------------------
    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """What gradient balancers treat as shared between tasks (default: everything)."""
        return self.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """The parameters only ``task`` trains (its head; its own encoder)."""
        return iter(())

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """The task heads, which ``train.head_lr`` trains at their own rate (default: all that is not shared)."""
        shared = {id(p) for p in self.shared_parameters()}
        return (p for p in self.parameters() if id(p) not in shared)

    def task_state_prefix(self, task: str) -> str:
        """State-dict prefix of ``task``'s own network, for per-task model selection (:attr:`independent_tasks`)."""
        return ""

    # -- predictions ---------------------------------------------------------------------------
    def predictions(self, logits: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each task's served value (probability, value, class distribution) from its logits."""
        raise NotImplementedError(f"{type(self).__name__} does not turn logits into predictions")

    def fused_score(self, logits: Mapping[str, Tensor]) -> Tensor:
        """The configured ranking score (:mod:`mtlkit.models.fusion`) from the task logits."""
        if self.fusion is None:
            raise ValueError("this model has no fusion configured (model.fusion)")
        return self.fusion.score(self.predictions(logits))

    # -- diagnostics and export ----------------------------------------------------------------
    def gate_weights(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{gate: (B, experts)}`` mixture weights on a batch's inputs; empty for a model without gates."""
        return {}

    def gate_experts(self) -> dict[str, list[str]]:
        """Names of the experts each gate weighs (default: ``expert0``, ``expert1``, …)."""
        return {}

    def input_encoders(self) -> list[nn.Module]:
        """The modules that read the raw batch inputs (export checks it can describe them)."""
        return []


@runtime_checkable
class TrainTask(Protocol):
    """What the trainer and model selection read of a task (tabular :class:`~mtlkit.tasks.Task`, NLP kinds)."""

    name: str
    loss_weight: float
    metrics: list[str] | None

    @property
    def loss_family(self) -> str:
        """``"regression"`` or ``"classification"`` (what uncertainty weighting's likelihood is)."""
        ...

    def compute_loss(self, outputs: Any, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """A scalar: the (masked, weighted) mean loss of the batch's rows, exactly 0 for no row."""
        ...


@dataclass
class AuxiliaryTask:
    """A :class:`TrainTask` whose loss the model computes itself (:meth:`TrainableModel.auxiliary_losses`).

    The balancer sees it like any task, with ``loss_weight`` (DIEN's α); it has no label column
    and no validation metric, so model selection reads only the labelled tasks.
    """

    name: str
    loss_weight: float = 1.0
    metrics: list[str] | None = None
    loss_family: str = "classification"  # what uncertainty weighting's likelihood is

    def compute_loss(self, outputs: Any, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        raise TypeError(f"auxiliary task {self.name!r}: its loss comes from the model (TrainableModel.auxiliary_losses)")


@runtime_checkable
class Evaluator(Protocol):
    """Validation or test: every task's metrics of ``model`` on a fixed split."""

    def evaluate(self, model: nn.Module, device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
        ...


__all__ = ["AuxiliaryTask", "Evaluator", "TrainTask", "TrainableModel"]
