"""SNR-Trans and SNR-Aver: sub-network routing (Ma et al., "SNR: Sub-Network Routing for Flexible
Parameter Sharing in Multi-Task Learning", AAAI 2019).

The shared layers are split into ``subnetworks`` sub-networks per level (one per entry of
``hidden``); the outputs ``u_i`` of one level reach the inputs ``v_j`` of the next — and, after
the last level, each task's representation — through learned binary codes ``z_ij``:

* SNR-Trans (Fig. 1b): ``v_j = Σ_i z_ij W_ij u_i``, a transformation ``W_ij`` per connection;
* SNR-Aver (Fig. 1c):  ``v_j = Σ_i z_ij u_i``, the codes weight the sub-network outputs directly.

The codes are relaxed with the hard concrete distribution (Louizos et al. 2018; see
:class:`mtlkit.nn.hard_concrete.HardConcrete`), sampled once per training step, and are exactly
0/1 at evaluation. Sparsity comes from the expected-L0 penalty ``λ Σ_ij P(z_ij ≠ 0)``
(Louizos et al.'s expected-L0 term, which SNR adds to the task losses):
:meth:`SNR.regularization_loss` returns it already multiplied by ``l0_weight``; **the caller
adds it to the training loss** (it is not a task loss, so it bypasses the loss balancer).
Each sub-network is one Linear → activation layer; all sub-networks of a level are one batched
op, and all connections of a routing step one matmul with the codes folded into the weights.

Example:
    >>> import torch
    >>> bb = SNRTrans(10, ["a", "b"], SNRTrans.Options(subnetworks=3, hidden=[8, 8]))
    >>> {k: v.shape for k, v in bb.eval()(torch.zeros(1, 10)).items()}
    {'a': torch.Size([1, 8]), 'b': torch.Size([1, 8])}
    >>> sorted(bb.codes())
    ['route1', 'route2']
    >>> bb.codes()["route2"].unique().tolist()    # tasks × sub-networks, exactly 0/1 at eval
    [1.0]
    >>> bb.regularization_loss().shape
    torch.Size([])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import ClassVar, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.models.base import BACKBONES, Backbone, BackboneOptions
from mtlkit.nn.experts import ExpertBank
from mtlkit.nn.hard_concrete import HardConcrete


class SNROptions(BackboneOptions):
    subnetworks: int = Field(default=4, ge=1, description="sub-networks per level")
    hidden: list[int] = Field(default_factory=lambda: [64, 32], min_length=1, description="width of each level")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    l0_weight: float = Field(default=1e-3, ge=0.0, description="λ of the expected-L0 penalty")
    init_log_alpha: float = Field(default=2.0, description="initial log α of every code (2 → ~97% open)")
    beta: float = Field(default=2.0 / 3.0, gt=0.0, description="hard concrete temperature")


class Router(nn.Module):
    """Connections from ``n_in`` sub-networks of width ``dim`` to ``n_out`` targets, gated by codes."""

    def __init__(self, n_in: int, n_out: int, dim: int, transform: bool, options: SNROptions) -> None:
        super().__init__()
        self.codes = HardConcrete((n_out, n_in), options.init_log_alpha, options.beta)
        self.n_in, self.n_out, self.dim = n_in, n_out, dim
        self.weight: nn.Parameter | None = None
        if transform:
            # Each target sees n_in·dim inputs, so initialise like nn.Linear over all of them.
            bound = 1.0 / math.sqrt(n_in * dim)
            self.weight = nn.Parameter(torch.empty(n_out, n_in, dim, dim).uniform_(-bound, bound))

    def forward(self, u: Tensor) -> Tensor:
        """``(B, n_in, dim)`` → ``(B, n_out, dim)``."""
        z = self.codes()  # (n_out, n_in)
        if self.weight is None:  # SNR-Aver
            return torch.einsum("ji,bid->bjd", z, u)
        # SNR-Trans: fold the codes into W, then one (n_in·dim, n_out·dim) matmul for all connections.
        w = (self.weight * z[:, :, None, None]).permute(1, 2, 0, 3).reshape(self.n_in * self.dim, self.n_out * self.dim)
        return (u.reshape(u.shape[0], -1) @ w).view(u.shape[0], self.n_out, self.dim)


class SNR(Backbone):
    Options = SNROptions
    options: SNROptions
    transform: ClassVar[bool] = True

    def __init__(self, input_dim: int, task_names: Sequence[str], options: SNROptions) -> None:
        super().__init__(input_dim, task_names, options)
        n, widths = options.subnetworks, options.hidden
        def bank(d_in: int, d_out: int) -> ExpertBank:
            return ExpertBank(n, d_in, [d_out], options.activation, options.dropout)

        self.subnetworks = nn.ModuleList([bank(input_dim, widths[0])] + [bank(a, b) for a, b in zip(widths[:-1], widths[1:])])
        # routes[l] feeds level l+1 from level l; the last one feeds the tasks.
        targets = [n] * (len(widths) - 1) + [len(self.task_names)]
        self.routes = nn.ModuleList(Router(n, t, d, self.transform, options) for t, d in zip(targets, widths))
        self.output_dim = widths[-1]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.subnetworks[0](x)  # every first-level sub-network reads the input
        for route, subnetworks in zip(self.routes[:-1], self.subnetworks[1:]):
            h = subnetworks(route(h))
        out = self.routes[-1](h)
        return {name: out[:, t] for t, name in enumerate(self.task_names)}

    def codes(self) -> dict[str, Tensor]:
        """The routing codes in the current mode: ``{"route{l}": (targets, sub-networks)}``."""
        return {f"route{j}": route.codes() for j, route in enumerate(cast("Iterable[Router]", self.routes), start=1)}

    def regularization_loss(self) -> Tensor:
        """``l0_weight · Σ E[‖z‖_0]`` over every code; add it to the training loss."""
        return self.options.l0_weight * torch.stack([route.codes.expected_l0() for route in cast("Iterable[Router]", self.routes)]).sum()


@BACKBONES.register("snr_trans")
class SNRTrans(SNR):
    """SNR with a transformation matrix on every connection (Fig. 1b)."""

    transform = True


@BACKBONES.register("snr_aver")
class SNRAver(SNR):
    """SNR whose codes weight the sub-network outputs directly (Fig. 1c)."""

    transform = False
