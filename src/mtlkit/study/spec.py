"""The study file: a base run config, arms that patch it, seeds, metrics and search spaces.

A study asks whether multi-task learning helps on the user's data. Every arm is the base run
config with a patch deep-merged into it (backbone and options, balancer, a task subset with
auxiliary tasks, sampling, …); every arm is tuned with the same budget on the validation split
(:mod:`mtlkit.study.tuning`), then retrained on each seed and scored on test once. The
equal-capacity single-task arm is always there (:func:`mtlkit.study.arms.single_task_arm`).

Search-space keys are dotted paths into the run config (``train.lr``, ``model.options.hidden``,
``balancer.options.alpha``); a value is a range ``{low, high, log?}`` (float, or int when both
bounds are integers) or ``{choices: [...]}``.

Example:
    >>> spec = StudySpec.model_validate({
    ...     "base": {"data": {"dataset": "mmoe_synthetic"}},
    ...     "arms": [{"name": "mmoe", "patch": {"model": {"backbone": "mmoe"}}}],
    ...     "metrics": {"y1": "rmse", "y2": {"name": "rmse"}},
    ...     "search": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
    ... })
    >>> spec.metrics["y1"].direction, spec.search["train.lr"].kind
    ('minimize', 'float')
    >>> Param.model_validate({"low": 3, "high": 3})
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Param
      Value error, empty range: low (3) must be below high (3) [type=value_error, input_value={'low': 3, 'high': 3}, input_type=dict]
    ...
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ARM_NAME = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
SINGLE_TASK = "single_task"


class Param(BaseModel):
    """One search dimension: ``{low, high, log}`` or ``{choices}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Param:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("empty range: choices is an empty list")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give `low` and `high` (a range) or `choices`")
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low:g}")
        return self

    @property
    def kind(self) -> Literal["categorical", "int", "float"]:
        if self.choices is not None:
            return "categorical"
        return "int" if float(self.low).is_integer() and float(self.high).is_integer() and not self.log else "float"  # type: ignore[arg-type]

    def example(self) -> Any:
        """A value of the space (its first choice or its lower bound), to validate the key with."""
        if self.choices is not None:
            return self.choices[0]
        return int(self.low) if self.kind == "int" else self.low  # type: ignore[arg-type]


class MetricSpec(BaseModel):
    """The metric a task is judged on and whether higher is better (default: the metric's own direction)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _direction(self) -> MetricSpec:
        if self.direction is None:
            from mtlkit.metrics import METRICS

            if self.name == "loss":
                higher = False
            else:
                if self.name not in METRICS:
                    import mtlkit.nlp.kinds  # noqa: F401  registers the NLP kinds' metrics (f1, pearson, span F1, …)
                if self.name not in METRICS:
                    raise ValueError(f"unknown metric {self.name!r}: give `direction` (maximize or minimize) or one of {', '.join(METRICS.names())}")
                higher = METRICS.get(self.name).higher_is_better
            object.__setattr__(self, "direction", "maximize" if higher else "minimize")
        return self

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "maximize"


class ArmSpec(BaseModel):
    """One arm: a patch of the base config, an optional task subset, its own search-space keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=ARM_NAME)
    patch: dict[str, Any] = Field(default_factory=dict)
    tasks: list[str] | None = Field(default=None, min_length=1)  # trained tasks (those without a metric are auxiliary)
    search: dict[str, Param | None] = Field(default_factory=dict)  # null drops a study-level key for this arm
    versus: list[str] = Field(default_factory=list)  # other arms to compare with, besides single-task (e.g. without a task)


class PrunerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    startup_trials: int = Field(default=3, ge=0)  # median pruning starts after this many finished trials
    warmup_epochs: int = Field(default=1, ge=0)  # and never before this epoch


class TuningSpec(BaseModel):
    """The budget every arm gets, and where Optuna keeps its trials."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    trials: int = Field(default=8, ge=1)  # finished (complete or pruned) trials per arm
    epochs: int | None = Field(default=None, ge=1)  # per trial; default: the base's train.epochs
    sampler_seed: int = Field(default=0, ge=0)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    storage: str | None = None  # an RDB URL Optuna takes; default sqlite:///<out>/optuna.db
    heartbeat_seconds: int = Field(default=60, ge=1)  # a trial silent for 2x this long (a killed worker) is retried

    @field_validator("storage")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z][a-z0-9+]*://", value):
            raise ValueError(f"expected a database URL such as sqlite:///study.db or postgresql://host/db, got {value!r}")
        return value


class AffinitySpec(BaseModel):
    """The short joint run that measures inter-task affinity (:mod:`mtlkit.study.affinity`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(default=4, ge=1)
    every: int = Field(default=5, ge=1)  # steps between look-ahead measurements
    # The look-ahead SGD step. TAG takes the optimiser's rate; Adam's (1e-3) gives ratios of 1e-4, at the noise level.
    lookahead_lr: float = Field(default=0.1, gt=0)
    groups: int = Field(default=2, ge=1)  # budget: at most this many models
    backbone: str = "shared_bottom"


class TrackingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mlflow: str | bool | None = None  # true: a local file store under the study directory; or a tracking URI


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(default="study", pattern=ARM_NAME)
    base: str | dict[str, Any]  # a run config file (relative to the study file) or the config inline
    arms: list[ArmSpec] = Field(min_length=1)
    # at least 3: from 2 paired differences of one sign the bootstrap interval always excludes 0
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=3)
    metrics: dict[str, MetricSpec] = Field(min_length=1)
    search: dict[str, Param] = Field(default_factory=dict)
    tuning: TuningSpec = Field(default_factory=TuningSpec)
    affinity: AffinitySpec | None = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    # A finished trial or final run keeps best.pt (evaluate, export, serve) and drops last.pt, the resume
    # checkpoint with the optimiser state (3x the weights under Adam; 1.1 GB per seed for four MiniLMs).
    keep_last_checkpoints: bool = False

    @field_validator("metrics", mode="before")
    @classmethod
    def _short_metrics(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {task: {"name": m} if isinstance(m, str) else m for task, m in value.items()}
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        if any(s < 0 for s in value):
            raise ValueError("seeds must be >= 0")
        return value

    @model_validator(mode="after")
    def _arm_names(self) -> StudySpec:
        names = [a.name for a in self.arms]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise ValueError(f"arm name {duplicate!r} is used twice")
        for arm in self.arms:
            unknown = [v for v in arm.versus if v not in names and v != SINGLE_TASK or v == arm.name]
            if unknown:
                raise ValueError(f"arm {arm.name!r}: versus: {unknown[0]!r} is not another arm ({', '.join(names)})")
        return self

    def arm_search(self, arm: ArmSpec) -> dict[str, Param]:
        """The study-level space with the arm's own keys over it (null removes a key)."""
        merged: dict[str, Param | None] = {**self.search, **arm.search}
        return {k: v for k, v in merged.items() if v is not None}


__all__ = ["AffinitySpec", "ArmSpec", "MetricSpec", "Param", "PrunerSpec", "SINGLE_TASK", "StudySpec", "TrackingSpec", "TuningSpec"]
