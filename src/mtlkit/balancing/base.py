"""The balancer interface: per-task losses in, one backward pass out.

A balancer never inspects the backbone's structure. It receives the per-task scalar losses of
a step and the model (whose ``shared_parameters()`` gradient methods differentiate), calls
``backward`` exactly as it sees fit, and returns the combined loss for logging. Balancers with
learnable state (uncertainty weights, GradNorm weights) are ``nn.Module``s whose parameters the
trainer optimises alongside the model's.

Adding a method is one file plus one registry line::

    @BALANCERS.register("my_method")
    class MyMethod(LossWeighting):
        class Options(BalancerOptions): ...
        def weights(self, losses): ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mtlkit.protocols import TrainableModel
from mtlkit.registry import Registry


class BalancerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Balancer(nn.Module):
    Options: ClassVar[type[BalancerOptions]] = BalancerOptions
    #: Representation-level methods (MGDA-UB): the trainer asks the model to keep the shared
    #: representation of each forward (``TrainableModel.keep_shared_features``) for ``backward``.
    needs_shared_features: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str], options: BalancerOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.options = options
        self.loss_weights = {t: float((loss_weights or {}).get(t, 1.0)) for t in self.task_names}

    def backward(self, losses: Mapping[str, Tensor], model: TrainableModel) -> Tensor:
        """Back-propagate the step's losses into ``.grad``; return the combined loss (detached)."""
        raise NotImplementedError

    def epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        """Called once per epoch with the mean training loss per task (used by e.g. DWA)."""

    def current_weights(self) -> dict[str, float]:
        """The weight each task's loss carries now, for logging."""
        return dict(self.loss_weights)


class LossWeighting(Balancer):
    """A balancer that only rescales losses: ``backward(Σ_k w_k · L_k)``."""

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def backward(self, losses: Mapping[str, Tensor], model: TrainableModel) -> Tensor:
        total = self.combine(losses)
        total.backward()
        return total.detach()


BALANCERS: Registry[type[Balancer]] = Registry("balancer")


def stack_losses(losses: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """The losses of ``names`` that are present, as one vector (absent tasks give 0)."""
    reference = next(iter(losses.values()))
    zero = torch.zeros((), dtype=reference.dtype, device=reference.device)
    return torch.stack([losses.get(name, zero) for name in names])
