"""The assembled model: input encoder → backbone → one tower and head per task.

``forward`` maps a batch's ``inputs`` to ``{task: logits}`` (``(B,)`` for binary and regression
tasks, ``(B, C)`` for multiclass). :meth:`MultiTaskModel.shared_parameters` is what gradient
balancers treat as the shared part; towers are task-specific.

Example:
    >>> import torch
    >>> from mtlkit.tasks import Task, TaskKind
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

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.aitm import TransferChain, calibrator_loss
from mtlkit.models.base import Backbone
from mtlkit.models.dc2vr import Intervention
from mtlkit.models.dcmt import dcmt_risk
from mtlkit.models.escm2 import dr_risks, ips_risk
from mtlkit.models.esmm import product_logit
from mtlkit.models.fusion import FusionSpec
from mtlkit.models.relations import DCMTRelation, ESCM2Relation, TaskRelations
from mtlkit.models.shallow_tower import ShallowTower
from mtlkit.models.stacked_heads import stackable, stacked_heads
from mtlkit.nn import MLP, TabularEncoder
from mtlkit.nn.gradient_reversal import reverse_gradient, scheduled_lambda
from mtlkit.nn.input_affine import autocast_active
from mtlkit.nn.vocabulary_affine import FactoredInput
from mtlkit.protocols import AuxiliaryTask, TrainableModel
from mtlkit.tasks import Task, TaskKind


class TaskHead(nn.Module):
    """A task's tower MLP followed by the linear output layer."""

    def __init__(self, input_dim: int, task: Task, hidden: Sequence[int], dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.tower = MLP(input_dim, hidden, dropout=dropout, batch_norm=batch_norm)
        self.output = nn.Linear(self.tower.output_dim, task.output_dim)
        self.squeeze = task.output_dim == 1

    def logits(self, features: Tensor) -> Tensor:
        """The output layer on the tower's features."""
        logits = self.output(features)
        return logits.squeeze(-1) if self.squeeze else logits

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.tower(x))


class MultiTaskModel(TrainableModel):
    """Encoder → backbone → one head per task (+ task relations, shallow tower, fusion)."""

    def __init__(
        self,
        encoder: nn.Module,
        backbone: Backbone,
        tasks: Sequence[Task],
        tower_hidden: Sequence[int] = (),
        tower_dropout: float = 0.0,
        relations: TaskRelations | None = None,
        shallow_tower: ShallowTower | None = None,
        fusion: FusionSpec | None = None,
        tower_batch_norm: bool = False,
    ) -> None:
        super().__init__([t.name for t in tasks])
        self.encoder = encoder
        self.backbone = backbone
        self.tasks = {t.name: t for t in tasks}
        self.relations = relations or TaskRelations()
        self.relations.check(tasks)
        derived = self.relations.derived()

        def input_dim(name: str) -> int:
            return backbone.output_dim + sum(self.tasks[p.source].output_dim for p in self.relations.sources(name))

        self.heads: Mapping[str, TaskHead] = nn.ModuleDict(  # type: ignore[assignment]  # torch stub: ModuleDict is not generic
            {t.name: TaskHead(input_dim(t.name), t, tower_hidden, tower_dropout, tower_batch_norm) for t in tasks if t.name not in derived}
        )
        aitm = self.relations.aitm
        if aitm is not None:
            widths = {self.heads[name].tower.output_dim for name in aitm.chain}
            if len(widths) > 1:
                raise ValueError("relations.aitm: the chained towers must end in the same width")
        self.transfer = TransferChain(aitm.chain, widths.pop()) if aitm is not None else None
        # ESCM²-DR's imputation tower / DCMT's counterfactual tower: one more head on the CVR task's input.
        self.auxiliary = nn.ModuleDict()
        counterfactual = self.relations.counterfactual()
        needs_second_tower = isinstance(counterfactual, DCMTRelation) or (
            isinstance(counterfactual, ESCM2Relation) and counterfactual.estimator == "dr")
        if counterfactual is not None and needs_second_tower:
            second = Task(name="counterfactual", kind=TaskKind.BINARY)
            self.auxiliary["counterfactual"] = TaskHead(input_dim(counterfactual.cvr), second, tower_hidden, tower_dropout)
        # DC2VR: the source towers' outputs intervene on the target tower's output (before its output layer).
        self.intervention: Intervention | None = None
        dc2vr = self.relations.dc2vr
        if dc2vr is not None:
            base_dim = self.heads[dc2vr.task].tower.output_dim
            source_dim = sum(self.heads[name].tower.output_dim for name in dc2vr.sources)
            if dc2vr.rank >= min(base_dim, source_dim):
                raise ConfigError(f"model.relations.dc2vr.rank: {dc2vr.rank} must be below the tower widths "
                                  f"({dc2vr.task}: {base_dim}, sources: {source_dim})")
            self.intervention = Intervention(base_dim, source_dim, dc2vr.rank, dc2vr.dropout)
        self.shallow_tower = shallow_tower
        self.fusion = fusion
        self._order = self.relations.order(self.task_names)
        # Without relations every head reads only its representation: the plain, fastest path,
        # and when the towers are alike, all of them run as one batched matmul per layer.
        self._plain = not self.relations.any()
        self._stacked = self._plain and stackable([(self.heads[n].tower, self.heads[n].output) for n in self.task_names])
        self._penalties: dict[str, Tensor] = {}
        self._auxiliary_logits: dict[str, Tensor] = {}
        # Adversarial tasks: λ at the current training progress (gradient reversal before their tower).
        self._grl = {t.name: scheduled_lambda(t.grl_lambda, t.grl_schedule, 0.0) for t in tasks if t.grl_lambda is not None}

    def set_training_progress(self, fraction: float) -> None:
        """Anneals the adversarial tasks' λ (``grl_schedule: ganin``)."""
        for name in self._grl:
            task = self.tasks[name]
            assert task.grl_lambda is not None
            self._grl[name] = scheduled_lambda(task.grl_lambda, task.grl_schedule, fraction)

    def _reversed(self, reps: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """The adversarial tasks' representations behind a gradient reversal (identity forward)."""
        if not self._grl:
            return reps
        return {name: reverse_gradient(rep, self._grl[name]) if name in self._grl else rep for name, rep in reps.items()}

    @property
    def loss_task_names(self) -> list[str]:
        """Tasks trained by a loss of their own (all but ESMM's CVR), then the auxiliary tasks: what the balancer weighs."""
        untrained = self.relations.untrained()
        return [*(name for name in self.task_names if name not in untrained), *(t.name for t in self.auxiliary_tasks())]

    def auxiliary_tasks(self) -> list[AuxiliaryTask]:
        """The encoder's self-supervised tasks (DIEN's auxiliary loss, sequence objectives)."""
        return self.encoder.auxiliary_tasks() if isinstance(self.encoder, TabularEncoder) else []

    def auxiliary_losses(self) -> dict[str, Tensor]:
        return self.encoder.auxiliary_losses() if isinstance(self.encoder, TabularEncoder) else {}

    def representations(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The backbone's per-task representations (what MGDA-UB-style methods differentiate)."""
        factored = self._factored_input(inputs)
        if factored is not None:  # small fields in vocabulary space: the encoder output never exists whole
            return self.backbone.run(factored, inputs)  # type: ignore[arg-type]
        encoded = self.encoder(inputs)
        self.backbone.constant_input = self._constant_columns(inputs)
        try:
            reps = self.backbone.run(encoded, inputs)
        finally:  # only for this call: a direct call of the backbone differentiates every column
            self.backbone.constant_input = None
        if self.keep_shared_features and torch.is_grad_enabled():
            # The backbone's own shared tensor if it names one (e.g. MoE expert outputs), else the
            # one tensor all tasks read (shared-bottom), else the encoder output.
            shared = self.backbone.last_shared_features
            distinct = {id(r): r for r in reps.values()}
            self.last_shared_features = shared if shared is not None else (
                next(iter(distinct.values())) if len(distinct) == 1 else encoded)
        return reps

    def _factored_input(self, inputs: Mapping[str, Tensor]) -> FactoredInput | None:
        """The encoder output as a :class:`~mtlkit.nn.vocabulary_affine.FactoredInput` when the backbone's
        first layer takes one and nothing else reads the output: a training step (or inference without
        gradients), not MGDA-UB's shared-feature mode, not while a graph is captured (export,
        ``torch.compile``), not under autocast (bf16 GEMMs the usual way are faster, and the same numbers
        as a compiled or exported model's)."""
        if not isinstance(self.encoder, TabularEncoder) or not self.backbone.takes_factored_input() or self.keep_shared_features:
            return None
        if torch.is_grad_enabled() and not self.training:  # eval with gradients: attributions read the encoder output
            return None
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return None
        device = inputs["categorical"].device.type if "categorical" in inputs else "cpu"
        if autocast_active(device):
            return None
        return self.encoder.factored(inputs, constant_numeric=self._constant_columns(inputs) is not None)

    def _constant_columns(self, inputs: Mapping[str, Tensor]) -> slice | None:
        """The encoder output's numeric columns when nothing will differentiate them: not when the
        numeric inputs require a gradient (attributions) nor when MGDA-UB may differentiate the
        encoder output itself (``keep_shared_features``)."""
        numeric = inputs.get("numeric")
        if numeric is None or numeric.requires_grad or self.keep_shared_features or not isinstance(self.encoder, TabularEncoder):
            return None
        return self.encoder.numeric_columns

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        reps = self._reversed(self.representations(inputs))
        bias: dict[str, Tensor] = {}
        if self.shallow_tower is not None and self.shallow_tower.applies():
            bias = self.shallow_tower(inputs["bias"])
        if not self._plain:
            return self._related_heads(reps, bias)
        if self._stacked:
            heads = [self.heads[name] for name in self.task_names]
            outputs = stacked_heads([(h.tower, h.output) for h in heads], [reps[name] for name in self.task_names])
            out = {name: y.squeeze(-1) if h.squeeze else y for name, h, y in zip(self.task_names, heads, outputs)}
        else:
            out = {name: self.heads[name](reps[name]) for name in self.task_names}
        for name, bias_logit in bias.items():
            out[name] = out[name] + bias_logit
        return out

    def _related_heads(self, reps: Mapping[str, Tensor], bias: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Heads in dependency order; the bias logit joins before any other task reads a head."""
        out: dict[str, Tensor] = {}
        products = self.relations.products()
        counterfactual = self.relations.counterfactual()
        second = self.auxiliary["counterfactual"] if "counterfactual" in self.auxiliary else None
        chain = self.relations.aitm.chain if self.relations.aitm is not None else []
        fused: dict[str, Tensor] = {}
        dc2vr = self.relations.dc2vr
        final: dict[str, Tensor] = {}  # each tower's output as its output layer reads it (DC2VR's sources)
        for name in self._order:
            if name in products:
                out[name] = product_logit(*(out[factor] for factor in products[name]))
                continue
            x = reps[name]
            sources = self.relations.sources(name)
            if sources:
                extra = []
                for p in sources:
                    # A probability even for odds-output tasks: bounded, like what it was trained on.
                    value = self.tasks[p.source].predict_for_metrics(out[p.source])
                    value = value.detach() if p.stop_gradient else value
                    extra.append(value.unsqueeze(-1) if value.dim() == 1 else value)
                x = torch.cat([x, *extra], dim=-1)
            features = self.heads[name].tower(x)
            if name in chain and self.transfer is not None:
                i = chain.index(name)
                previous = chain[i - 1] if i > 0 else None
                features = self.transfer.fuse(name, previous, fused.get(previous) if previous else None, features)
                fused[name] = features
            if dc2vr is not None and self.intervention is not None and name == dc2vr.task:
                features = self.intervention(features, torch.cat([final[s] for s in dc2vr.sources], dim=-1))
            final[name] = features
            out[name] = self.heads[name].logits(features)
            if name in bias:
                out[name] = out[name] + bias[name]
            if second is not None and counterfactual is not None and name == counterfactual.cvr and torch.is_grad_enabled():
                self._auxiliary_logits = {"counterfactual": second(x)}
        if chain and torch.is_grad_enabled():
            probabilities = torch.stack([torch.sigmoid(out[name]) for name in chain], dim=-1)
            self._penalties = {chain[-1]: calibrator_loss(probabilities, self.relations.aitm.alpha)}  # type: ignore[union-attr]
        return out

    def task_penalties(self) -> dict[str, Tensor]:
        """Extra loss terms of the last forward, per task (AITM's calibrator), added to its loss."""
        penalties, self._penalties = self._penalties, {}
        return penalties

    def relation_losses(self, logits: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                        masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """ESCM²'s counterfactual risk or DCMT's twin-tower loss: the CVR task's training loss; DC2VR's
        task-space weighted loss."""
        own = self._space_weighted_loss(logits, targets, masks)
        r = self.relations.counterfactual()
        if r is None or r.ctr not in targets:
            self._auxiliary_logits = {}
            return own
        rows = masks[r.ctr].to(logits[r.cvr].dtype)  # impressions with a click label: the space D
        clicked = targets[r.ctr].to(rows) * rows
        # r is read on clicked rows only; elsewhere (no conversion label) it is 0 by definition.
        converted = torch.where(clicked > 0, targets[r.cvr].to(rows), torch.zeros_like(rows)).nan_to_num(0.0)
        propensity = torch.sigmoid(logits[r.ctr].float())
        cvr_logit = logits[r.cvr].float()
        auxiliary, self._auxiliary_logits = self._auxiliary_logits, {}
        if isinstance(r, ESCM2Relation):
            if r.estimator == "ips":
                return {r.cvr: r.weight * ips_risk(cvr_logit, converted, clicked, propensity, r.ips_clip, rows)}
            dr, imputation = dr_risks(cvr_logit, converted, clicked, propensity, auxiliary["counterfactual"].float(), r.ips_clip, rows)
            return {r.cvr: r.weight * (dr + imputation)}
        return {r.cvr: r.weight * dcmt_risk(cvr_logit, auxiliary["counterfactual"].float(), converted, clicked, propensity,
                                            r.constraint, r.ips_clip, rows)}

    def _space_weighted_loss(self, logits: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                             masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """TorchEasyRec's task-space weights: rows whose ``space`` label is positive weigh ``in_space_weight``,
        the others ``out_space_weight``; the task's weighted mean loss (so only their ratio matters)."""
        r = self.relations.dc2vr
        if r is None or r.space is None or r.task not in targets or r.space not in targets:
            return {}
        task = self.tasks[r.task]
        logit = logits[r.task].float()
        in_space = (targets[r.space].nan_to_num(0.0) > 0).to(logit.dtype)
        weight = r.in_space_weight * in_space + r.out_space_weight * (1 - in_space)
        return {r.task: task.compute_loss(logit, targets[r.task], weight, masks[r.task])}

    def predictions(self, logits: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each task's prediction (probability, value or class distribution) from its logits."""
        return {name: self.tasks[name].predict(value) for name, value in logits.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.backbone.parameters()

    def regularization_loss(self) -> Tensor | None:
        """The backbone's own penalty (SNR: λ·E[L0]), added to the training loss; None if it has none."""
        return self.backbone.regularization_loss()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        if task in self.heads:
            yield from self.heads[task].parameters()
        if self.intervention is not None and self.relations.dc2vr is not None and task == self.relations.dc2vr.task:
            yield from self.intervention.parameters()
        counterfactual = self.relations.counterfactual()
        if counterfactual is not None and task == counterfactual.cvr:
            yield from self.auxiliary.parameters()

    def gate_weights(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.backbone.gate_weights_on(self.encoder(inputs), inputs)

    def gate_experts(self) -> dict[str, list[str]]:
        return self.backbone.gate_experts()

    def input_encoders(self) -> list[nn.Module]:
        return [self.encoder]


class IndependentTaskModels(TrainableModel):
    """One complete :class:`MultiTaskModel` per task, sharing nothing (the single-task baseline)."""

    independent_tasks = True

    def __init__(self, models: Mapping[str, MultiTaskModel], fusion: FusionSpec | None = None) -> None:
        super().__init__(list(models))
        self.per_task: Mapping[str, MultiTaskModel] = nn.ModuleDict(dict(models))  # type: ignore[assignment]  # torch stub: ModuleDict is not generic
        self.fusion = fusion

    def predictions(self, logits: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.per_task[name].tasks[name].predict(value) for name, value in logits.items()}

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.per_task[name](inputs)[name] for name in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def set_training_progress(self, fraction: float) -> None:
        for model in self.per_task.values():
            model.set_training_progress(fraction)

    def auxiliary_tasks(self) -> list[AuxiliaryTask]:
        """Each task network's auxiliary tasks, named ``<task>/<auxiliary>``."""
        return [AuxiliaryTask(f"{name}/{t.name}", t.loss_weight) for name, m in self.per_task.items() for t in m.auxiliary_tasks()]

    def auxiliary_losses(self) -> dict[str, Tensor]:
        return {f"{name}/{aux}": loss for name, m in self.per_task.items() for aux, loss in m.auxiliary_losses().items()}

    def regularization_loss(self) -> Tensor | None:
        terms = [p for m in self.per_task.values() if (p := m.regularization_loss()) is not None]
        return torch.stack(terms).sum() if terms else None

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.per_task[task].parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Each task network's own heads (its encoder and backbone train at the base rate, as in the multi-task model)."""
        for model in self.per_task.values():
            yield from model.head_parameters()

    def input_encoders(self) -> list[nn.Module]:
        return [model.encoder for model in self.per_task.values()]

    def task_state_prefix(self, task: str) -> str:
        """State-dict prefix of a task's network (for per-task model selection)."""
        return f"per_task.{task}."
