"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020, Algorithm 1, lines 10–15), via torchjd.

For every coordinate of the shared gradient, the positive-sign purity
``P = ½ (1 + Σ_k g_k / Σ_k |g_k|)`` is compared with a uniform draw ``U``: if ``P > U`` only the
positive components are kept, else only the negative ones, and ``d = Σ_k M_k ⊙ g_k`` (optionally
letting a fraction ``leak_k`` of task k through unmasked). mtlkit applies it to the Jacobian of
the shared parameters (torchjd's choice); the paper applies it to the activations of a chosen
layer. Coordinates no task touches stay 0; draws come from torch's global RNG.

Options: ``leak`` (task → leak in [0, 1], default none).

Example:
    >>> import torch
    >>> b = GradDrop(["a", "b"], GradDrop.Options())
    >>> J = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 0.0]])   # no sign conflict: kept as is
    >>> b.aggregate(J, torch.tensor([True, True]))
    tensor([4., 3., 0.])
"""

from __future__ import annotations

import torch
from pydantic import field_validator

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.torchjd_backend import TorchJDBalancer, TorchJDOptions


class GradDropOptions(TorchJDOptions):
    leak: dict[str, float] | None = None

    @field_validator("leak")
    @classmethod
    def _in_unit_interval(cls, value):
        if value is not None and any(not 0.0 <= v <= 1.0 for v in value.values()):
            raise ValueError("leak values must lie in [0, 1]")
        return value


@BALANCERS.register("graddrop")
class GradDrop(TorchJDBalancer):
    Options = GradDropOptions
    consumes = "jacobian"
    method = "graddrop"

    def make(self, tasks):
        leak = self.preference(self.options.leak, tasks)
        if leak is not None:
            leak = torch.tensor([(self.options.leak or {}).get(self.task_names[i], 0.0) for i in tasks])
        return self.aggregation.GradDrop(leak=leak)


__all__ = ["GradDrop", "GradDropOptions"]
