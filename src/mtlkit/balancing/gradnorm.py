"""GradNorm: gradient normalisation for adaptive loss balancing (Chen et al., ICML 2018, Eq. 1–2).

The loss is ``L = Σ_k w_k L_k`` with learned weights ``w`` that are trained only through

    L_grad = Σ_k | G_W^(k) − Ḡ_W · [r_k]^α |,    G_W^(k) = ‖∇_W w_k L_k‖,   Ḡ_W = mean_k G_W^(k),
    r_k = L̃_k / mean_j L̃_j,   L̃_k = L_k(t) / L_k(0)

where ``W`` is the last shared layer, the target ``Ḡ_W·r_k^α`` is held constant, and ``α`` the
asymmetry (larger: stronger pull towards equal training rates). After every optimiser step the
weights are renormalised to ``Σ_k w_k = T`` (done at the start of the next step, so
``current_weights()`` always sums to ``T``). ``∇_W`` of every task comes from one batched
backward to ``W`` only; since ``G_W^(k) = w_k ‖∇_W L_k‖`` is linear in ``w_k``, ``∂L_grad/∂w`` needs
no second-order gradient. ``w`` is a parameter, stepped by the trainer's optimiser with the model.

``layer`` names the parameter ``W`` (as in ``model.named_parameters()``); by default the last
shared parameter with at least two dimensions (the last shared weight matrix). ``L_k(0)`` is the
loss of the first step in which task k is present (saved in checkpoints). Tasks absent from a step
(zero gradient) are left out of ``Ḡ_W``, the mean ratio and ``L_grad``.

Options: ``alpha`` (default 1.5), ``layer``, ``jacobian``.

Example:
    >>> import torch
    >>> from mtlkit.protocols import TrainableModel
    >>> class Net(TrainableModel):
    ...     def __init__(self):
    ...         super().__init__(["a", "b"])
    ...         self.trunk, self.heads = torch.nn.Linear(3, 4), torch.nn.ModuleList([torch.nn.Linear(4, 1) for _ in range(2)])
    ...     def shared_parameters(self):
    ...         return self.trunk.parameters()
    ...     def forward(self, x):
    ...         z = torch.relu(self.trunk(x))
    ...         return [h(z).squeeze(-1) for h in self.heads]
    >>> _ = torch.manual_seed(0)
    >>> net, x, y = Net(), torch.randn(8, 3), torch.randn(8)
    >>> b = GradNorm(["a", "b"], GradNorm.Options(alpha=0.12))
    >>> out = net(x)
    >>> _ = b.backward({"a": ((out[0] - y) ** 2).mean(), "b": ((out[1] - 10 * y) ** 2).mean()}, net)
    >>> bool(b.task_weights.grad[1] > 0)      # task b's gradient is larger: its weight will shrink
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.gradient import GradientBalancer, GradientOptions, flat_jacobian
from mtlkit.errors import ConfigError
from mtlkit.nn.embedding_tables import sparse_weights
from mtlkit.protocols import TrainableModel


class GradNormOptions(GradientOptions):
    alpha: float = Field(default=1.5, ge=0)
    layer: str | None = None


@BALANCERS.register("gradnorm")
class GradNorm(GradientBalancer):
    Options = GradNormOptions
    options: GradNormOptions
    initial_losses: Tensor
    seen: Tensor

    def __init__(self, task_names: Sequence[str], options: GradNormOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        t = len(self.task_names)
        self.task_weights = nn.Parameter(torch.ones(t))
        self.register_buffer("initial_losses", torch.zeros(t))
        self.register_buffer("seen", torch.zeros(t, dtype=torch.bool))
        self._layer: tuple[int, Tensor] | None = None

    def layer(self, model: TrainableModel) -> Tensor:
        """The parameter ``W`` whose per-task gradient norms are balanced."""
        if self._layer is not None and self._layer[0] == id(model):
            return self._layer[1]
        if self.options.layer is not None:
            named = dict(model.named_parameters())
            if self.options.layer not in named:
                raise ConfigError(f"balancer 'gradnorm': options.layer {self.options.layer!r} is not a parameter of the "
                                  f"model; e.g. {', '.join(list(named)[-4:])}")
            param = named[self.options.layer]
            if any(param is t for t in sparse_weights(model)):
                raise ConfigError(f"balancer 'gradnorm': options.layer {self.options.layer!r} is an embedding table with "
                                  "sparse gradients; name a dense shared layer")
        else:
            shared = list(model.shared_parameters())
            tables = {id(t) for t in sparse_weights(model)}  # a touched-rows table is no layer to balance
            matrices = [p for p in shared if p.requires_grad and p.dim() >= 2 and id(p) not in tables]
            if not matrices:
                raise ConfigError("balancer 'gradnorm': the model has no shared weight matrix; set options.layer")
            param = matrices[-1]
        self._layer = (id(model), param)
        return param

    def backward(self, losses: Mapping[str, Tensor], model: TrainableModel) -> Tensor:
        t = len(self.task_names)
        with torch.no_grad():  # renormalise after the optimiser's last step: Σ w = T
            self.task_weights.clamp_(min=1e-6)
            self.task_weights.mul_(t / self.task_weights.sum())
        rows, objectives, f = self.objectives(losses)
        w = self.task_weights.to(f)
        jac = flat_jacobian(objectives, [self.layer(model)], self.options.jacobian) if rows else None
        if jac is not None:
            norms = jac.new_zeros(t)
            norms[rows] = jac.norm(dim=1)
            present = norms > 0
            loss_now = f
            self.initial_losses.copy_(torch.where(present & ~self.seen, loss_now, self.initial_losses))
            self.seen |= present
            count = present.sum().clamp_min(1)
            ratio = torch.where(present, loss_now / self.initial_losses.clamp_min(1e-12), torch.zeros_like(loss_now))
            relative = ratio / (ratio.sum() / count).clamp_min(1e-12)
            grad_norms = w * norms
            mean_norm = (grad_norms.detach() * present).sum() / count
            target = mean_norm * relative ** self.options.alpha
            gradnorm_loss = torch.where(present, (grad_norms - target).abs(), torch.zeros_like(grad_norms)).sum()
            (weight_grad,) = torch.autograd.grad(gradnorm_loss, self.task_weights)
            self.task_weights.grad = weight_grad if self.task_weights.grad is None else self.task_weights.grad + weight_grad
        if rows:
            (w.detach()[rows] * torch.stack(objectives)).sum().backward()
        self.last_weights = w.detach().clone()  # not a view of the parameter the optimiser steps
        return (self.last_weights * f).sum()


__all__ = ["GradNorm", "GradNormOptions"]
