"""Config side of balancers: ``balancer: {name: fixed, options: {...}}``.

Example:
    >>> from mtlkit.tasks import Task
    >>> b = build_balancer(BalancerSpec(), [Task(name="a", kind="binary", loss_weight=2.0)])
    >>> b.current_weights()
    {'a': 2.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mtlkit.balancing.base import BALANCERS, Balancer
from mtlkit.protocols import TrainTask


class BalancerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "fixed"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> BalancerSpec:
        if self.name not in BALANCERS:
            raise ValueError(f"unknown balancer {self.name!r}; choose one of: {', '.join(BALANCERS.names())}")
        BALANCERS.get(self.name).Options(**self.options)
        return self


def build_balancer(spec: BalancerSpec, tasks: Sequence[TrainTask]) -> Balancer:
    """The balancer ``spec`` names, for ``tasks`` (tabular or NLP) with their loss weights."""
    cls = BALANCERS.get(spec.name)
    options = dict(spec.options)
    if "kinds" in cls.Options.model_fields:  # uncertainty weighting: regression vs classification
        known = {t.name: t.loss_family for t in tasks}
        options["kinds"] = {**known, **options.get("kinds", {})}
    return cls([t.name for t in tasks], cls.Options(**options), {t.name: t.loss_weight for t in tasks})
