"""The backbone interface: encoded input in, one representation per task out.

A backbone decides what is shared between tasks (nothing, a bottom MLP, experts and gates…).
It never sees labels, losses or the balancer. Each backbone declares an ``Options`` model —
its hyper-parameters, validated before any work starts — and registers under a name:

    @BACKBONES.register("my_backbone")
    class MyBackbone(Backbone):
        class Options(BackboneOptions):
            width: int = 64
        ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mtlkit.registry import Registry

if TYPE_CHECKING:
    from mtlkit.models.layout import InputLayout


class BackboneOptions(BaseModel):
    """Hyper-parameters of a backbone; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Backbone(nn.Module):
    Options: ClassVar[type[BackboneOptions]] = BackboneOptions
    #: True when every task gets its own copy of the whole network, inputs included.
    independent_tasks: ClassVar[bool] = False
    #: True when the backbone needs ``model.scenario`` (STAR): data without a scenario column cannot train it.
    needs_scenario: ClassVar[bool] = False

    def __init__(self, input_dim: int, task_names: Sequence[str], options: BackboneOptions) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.task_names = list(task_names)
        self.options = options
        self.output_dim = input_dim

    #: Columns of ``x`` that no gradient is wanted for (the raw numeric features), set by the model
    #: before each forward; a backbone's first layer may then skip their input gradient
    #: (:func:`mtlkit.nn.input_affine.input_affine`). None: differentiate every column.
    constant_input: slice | None = None

    #: The tensor every task reads, kept at each forward with gradients by backbones that have one
    #: (MoE expert outputs); representation-level balancers (MGDA-UB) differentiate it.
    last_shared_features: Tensor | None = None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, input_dim)`` → ``{task: (B, output_dim)}``."""
        raise NotImplementedError

    # -- construction hooks: what a backbone that looks inside its input needs -------------------
    @classmethod
    def create(cls, input_dim: int, task_names: Sequence[str], options: BackboneOptions, layout: InputLayout) -> Backbone:
        """Build from the model spec; ``layout`` says where each feature sits in ``x`` (PEPNet's prior
        features, STEM's embedding copies, STAR's scenario field). Default: ignore it."""
        return cls(input_dim, task_names, options)

    @classmethod
    def embedding_copies(cls, options: BackboneOptions, n_tasks: int) -> int:
        """How many embeddings of each categorical field the encoder makes (STEM: one per task + shared)."""
        return 1

    def takes_factored_input(self) -> bool:
        """Whether ``forward`` accepts a :class:`~mtlkit.nn.vocabulary_affine.FactoredInput` for ``x``
        (its only use of ``x`` is one affine map: MoE experts and gates, a shared bottom's first layer)."""
        return False

    def run(self, x: Tensor, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The model's call: ``x`` plus the raw batch ``inputs`` (scenario ids) for backbones that read them."""
        return self(x)

    def gate_weights_on(self, x: Tensor, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`gate_weights` with the raw batch inputs, as :meth:`run` is to ``forward``."""
        return self.gate_weights(x)

    # -- optional hooks: defaults for a backbone without them ------------------------------------
    def regularization_loss(self) -> Tensor | None:
        """A penalty on the backbone's parameters added to the training loss (SNR's λ·E[L0])."""
        return None

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{gate: (B, experts)}`` mixture weights on ``x``, as ``forward`` uses them; empty without gates."""
        return {}

    def gate_experts(self) -> dict[str, list[str]]:
        """The experts each gate mixes, in the order of :meth:`gate_weights`' columns."""
        return {}


BACKBONES: Registry[type[Backbone]] = Registry("backbone")
