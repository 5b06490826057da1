"""Relations between tasks: ESMM products, AITM chains, and one task's prediction as another's input.

``model.relations`` in the config. All three work on top of any backbone; they change how the
task heads are wired, never the backbone.

- ``esmm``: ``[{ctr: ctr, cvr: cvr, ctcvr: ctcvr}]``: ``ctcvr``'s probability is the product of the
  other two (see :mod:`mtlkit.models.esmm`); ``cvr`` is predicted and evaluated but gets no loss.
- ``aitm``: ``{chain: [click, purchase], alpha: 0.6}``: information transfer along a funnel plus
  the calibrator loss (see :mod:`mtlkit.models.aitm`).
- ``escm2``: ``{ctr: ctr, cvr: cvr, ctcvr: ctcvr, estimator: ips}``: ESMM's product plus the
  counterfactual (IPS or doubly robust) risk on the CVR tower (see :mod:`mtlkit.models.escm2`);
  ``cvr`` is trained by that risk.
- ``dcmt``: ``{ctr: ctr, cvr: cvr, ctcvr: ctcvr}``: a factual and a counterfactual CVR tower
  trained over the entire space (see :mod:`mtlkit.models.dcmt`); ``ctcvr`` is optional.
- ``dc2vr``: ``{task: cvr, sources: [ctr], rank: 2}``: the click tower's output, gradient stopped,
  intervenes on the conversion tower's through orthonormal low-rank projections, as TorchEasyRec
  implements it (see :mod:`mtlkit.models.dc2vr`); optional task-space loss weights.
- ``prediction_inputs``: ``[{task: cvr, source: ctr, stop_gradient: true}]``: ``cvr``'s tower also
  reads ``ctr``'s prediction (probability, value or class distribution). With the default
  stop-gradient, ``cvr``'s loss does not flow back into ``ctr``'s tower; set it to false to let it.

Example:
    >>> from mtlkit.tasks import Task
    >>> tasks = [Task(name=n, kind="binary") for n in ("ctr", "cvr", "ctcvr")]
    >>> relations = TaskRelations(esmm=[{"ctr": "ctr", "cvr": "cvr", "ctcvr": "ctcvr"}])
    >>> relations.check(tasks)
    >>> sorted(relations.untrained()), sorted(relations.derived())
    (['cvr'], ['ctcvr'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mtlkit.tasks import Task, TaskKind


class ESMMRelation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ctr: str
    cvr: str
    ctcvr: str


class AITMRelation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    chain: list[str] = Field(min_length=2)
    alpha: float = Field(default=0.6, ge=0.0)  # the paper's calibrator strength


class ESCM2Relation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ctr: str
    cvr: str
    ctcvr: str
    estimator: Literal["ips", "dr"] = "ips"
    weight: float = Field(default=0.1, ge=0.0)        # λ_c, the counterfactual risk's weight
    ips_clip: float = Field(default=15.0, ge=1.0)     # the largest inverse propensity 1/ô


class DCMTRelation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ctr: str
    cvr: str
    ctcvr: str | None = None
    weight: float = Field(default=1.0, ge=0.0)        # scales the DCMT CVR loss
    constraint: float = Field(default=0.1, ge=0.0)    # λ of the counterfactual regulariser |1 − (r̂ + r̂*)|
    ips_clip: float = Field(default=15.0, ge=1.0)


class DC2VRRelation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    task: str                                         # the conversion task whose tower is intervened on
    sources: list[str] = Field(min_length=1)          # the click task(s) whose tower output intervenes
    rank: int = Field(default=2, ge=1)                # r, below both tower widths
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)  # after the intervention (TorchEasyRec's default)
    space: str | None = None                          # task whose positive label marks `task`'s space (click)
    in_space_weight: float = Field(default=1.0, ge=0.0)
    out_space_weight: float = Field(default=1.0, ge=0.0)


class PredictionInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    task: str
    source: str
    stop_gradient: bool = True


class TaskRelations(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    esmm: list[ESMMRelation] = Field(default_factory=list)
    aitm: AITMRelation | None = None
    escm2: ESCM2Relation | None = None
    dcmt: DCMTRelation | None = None
    dc2vr: DC2VRRelation | None = None
    prediction_inputs: list[PredictionInput] = Field(default_factory=list)

    def untrained(self) -> set[str]:
        """Tasks predicted and evaluated without a loss of their own (ESMM's CVR)."""
        return {r.cvr for r in self.esmm}

    def derived(self) -> set[str]:
        """Tasks whose output is computed from other tasks' outputs (ESMM's CTCVR): no head."""
        return {ctcvr for ctcvr, _ in self.products().items()}

    def products(self) -> dict[str, tuple[str, str]]:
        """``{ctcvr: (ctr, cvr)}``: the tasks predicted as the product of two others."""
        products = {r.ctcvr: (r.ctr, r.cvr) for r in self.esmm}
        for r in (self.escm2, self.dcmt):
            if r is not None and r.ctcvr is not None:
                products[r.ctcvr] = (r.ctr, r.cvr)
        return products

    def counterfactual(self) -> ESCM2Relation | DCMTRelation | None:
        """The entire-space CVR relation whose loss the model computes itself (ESCM² or DCMT)."""
        return self.escm2 or self.dcmt

    def any(self) -> bool:
        """Whether any relation is declared (then the model wires its heads in dependency order)."""
        return bool(self.esmm or self.aitm or self.prediction_inputs or self.escm2 or self.dcmt or self.dc2vr)

    def sources(self, task: str) -> list[PredictionInput]:
        return [p for p in self.prediction_inputs if p.task == task]

    def check(self, tasks: Sequence[Task]) -> None:
        """Raise ValueError naming the first relation that does not fit the tasks."""
        kinds = {t.name: t.kind for t in tasks}
        widths = {t.name: t.output_dim for t in tasks}

        def known(name: str, where: str, binary: bool = False) -> None:
            if name not in kinds:
                raise ValueError(f"relations.{where}: unknown task {name!r}; tasks are: {', '.join(kinds)}")
            if binary and kinds[name] is not TaskKind.BINARY:
                raise ValueError(f"relations.{where}: task {name!r} must be binary")
            if binary and widths[name] != 1:
                raise ValueError(f"relations.{where}: task {name!r} must have one logit (its loss gives it {widths[name]})")

        for i, r in enumerate(self.esmm):
            for field in ("ctr", "cvr", "ctcvr"):
                known(getattr(r, field), f"esmm[{i}].{field}", binary=True)
            if len({r.ctr, r.cvr, r.ctcvr}) < 3:
                raise ValueError(f"relations.esmm[{i}]: ctr, cvr and ctcvr must be three different tasks")
        if self.escm2 is not None and self.dcmt is not None:
            raise ValueError("relations: escm2 and dcmt both train the CVR tower; declare one")
        for key in ("escm2", "dcmt"):
            r = getattr(self, key)
            if r is None:
                continue
            names = [r.ctr, r.cvr] + ([r.ctcvr] if r.ctcvr is not None else [])
            for field, name in zip(("ctr", "cvr", "ctcvr"), names):
                known(name, f"{key}.{field}", binary=True)
            if len(set(names)) < len(names):
                raise ValueError(f"relations.{key}: ctr, cvr and ctcvr must be different tasks")
            if r.cvr in self.untrained() or r.ctcvr in {e.ctcvr for e in self.esmm}:
                raise ValueError(f"relations.{key}: its tasks are already in an esmm relation")
        derived = self.derived()
        declared = len(self.esmm) + sum(1 for r in (self.escm2, self.dcmt) if r is not None and r.ctcvr is not None)
        if len(derived) < declared:
            raise ValueError("relations.esmm: a ctcvr task appears in two relations")
        if self.aitm is not None:
            for name in self.aitm.chain:
                known(name, "aitm.chain", binary=True)
                if name in derived:
                    raise ValueError(f"relations.aitm.chain: {name!r} is an ESMM product and has no tower")
            if len(set(self.aitm.chain)) < len(self.aitm.chain):
                raise ValueError("relations.aitm.chain: a task appears twice")
        if self.dc2vr is not None:
            self._check_dc2vr(self.dc2vr, tasks, known, derived)
        for i, p in enumerate(self.prediction_inputs):
            known(p.task, f"prediction_inputs[{i}].task")
            known(p.source, f"prediction_inputs[{i}].source")
            if p.task in derived:
                raise ValueError(f"relations.prediction_inputs[{i}].task: {p.task!r} is an ESMM product and has no tower")
        self.order([t.name for t in tasks])  # raises on a cycle

    def _check_dc2vr(self, r: DC2VRRelation, tasks: Sequence[Task], known: Callable[[str, str], None], derived: set[str]) -> None:
        known(r.task, "dc2vr.task")
        for name in r.sources:
            known(name, "dc2vr.sources")
        for name in (r.task, *r.sources):
            if name in derived:
                raise ValueError(f"relations.dc2vr: {name!r} is an ESMM product and has no tower")
        if r.task in r.sources or len(set(r.sources)) < len(r.sources):
            raise ValueError("relations.dc2vr.sources: a task appears twice or is the intervened task itself")
        if self.aitm is not None and r.task in self.aitm.chain:
            raise ValueError(f"relations.dc2vr.task: {r.task!r} is in the aitm chain; both rewrite its tower's output, declare one")
        if r.space is None:
            if r.in_space_weight != 1.0 or r.out_space_weight != 1.0:
                raise ValueError("relations.dc2vr.space: in_space_weight/out_space_weight need the task marking the space (e.g. space: ctr)")
            return
        known(r.space, "dc2vr.space")
        counterfactual = self.counterfactual()
        if r.task in self.untrained() or (counterfactual is not None and r.task == counterfactual.cvr):
            raise ValueError(f"relations.dc2vr.space: {r.task!r} is trained by another relation's loss; drop the space weights")
        task = next(t for t in tasks if t.name == r.task)
        if task.mask is not None:
            raise ValueError(f"relations.dc2vr.space: task {r.task!r} has a mask, so its out-of-space rows never count; drop one")
        if task.weight_column is not None or task.positive_weight_column is not None or task.needs_groups:
            raise ValueError(f"relations.dc2vr.space: task {r.task!r} has its own row weights or groups; they do not combine with space weights")

    def order(self, names: Sequence[str]) -> list[str]:
        """Task names with every source before the tasks that read it (stable otherwise)."""
        after: dict[str, set[str]] = {n: set() for n in names}
        for p in self.prediction_inputs:
            after[p.task].add(p.source)
        if self.dc2vr is not None:
            after[self.dc2vr.task] |= set(self.dc2vr.sources)
        if self.aitm is not None:
            for previous, task in zip(self.aitm.chain, self.aitm.chain[1:]):
                after[task].add(previous)
        for ctcvr, factors in self.products().items():
            after[ctcvr] |= set(factors)
        ordered: list[str] = []
        while len(ordered) < len(names):
            ready = [n for n in names if n not in ordered and after[n] <= set(ordered)]
            if not ready:
                stuck = [n for n in names if n not in ordered]
                raise ValueError(f"relations: tasks {', '.join(stuck)} depend on each other in a cycle")
            ordered.append(ready[0])
        return ordered


__all__ = ["AITMRelation", "DC2VRRelation", "DCMTRelation", "ESCM2Relation", "ESMMRelation", "PredictionInput", "TaskRelations"]
