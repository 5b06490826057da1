"""MGDA-UB: MGDA on the shared representation (Sener & Koltun, NeurIPS 2018, §3.3, Eq. 6).

Instead of the parameter gradients, MGDA-UB minimises the upper bound
``‖Σ_k α_k ∇_Z L_k‖²`` where ``Z`` is the shared representation (the encoder's output): one
batched backward to ``Z`` (size ``B × d``) instead of to every shared parameter, and the same
min-norm solvers as :mod:`mtlkit.balancing.mgda`. Then

* the shared parameters upstream of ``Z`` receive ``∂Z/∂θ_sh ᵀ · Σ_k α_k ∇_Z (λ_k L_k)``
  (one backward through the shared part, started from ``Z``);
* shared parameters that ``Z`` does not depend on (e.g. gates read after ``Z``) receive the
  gradient of ``Σ_k α_k λ_k L_k``, and the towers that of ``Σ_k λ_k L_k``.

Where ``Z`` comes from: the model must expose the representation of the current forward pass
as ``model.last_shared_features`` — a tensor, or a list/tuple of tensors (e.g. an MMoE's expert
outputs) — that every task's output is computed from. The balancer reads it and then clears it
(sets it to ``None``), so a stale tensor from an earlier step is never reused.
:class:`mtlkit.models.MultiTaskModel` sets it when the trainer asks (``keep_shared_features``);
for other models :func:`expose_shared_features` sets it from any submodule's output with a
forward hook (``model.backbone.bottom`` for shared-bottom, ``model.backbone.experts`` for MoE). A
model without it raises a :class:`~mtlkit.errors.ConfigError` at the first step, unless
``fallback_to_parameters=True``, which then runs parameter-level MGDA. With several forward
passes per step (one batch per task), only the features of the last one would be seen: a task
whose loss does not depend on them has zero gradient and is treated as absent for that step.

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
    ...         self.last_shared_features = z = torch.relu(self.trunk(x))
    ...         return [h(z).squeeze(-1) for h in self.heads]
    >>> _ = torch.manual_seed(0)
    >>> net, x, y = Net(), torch.randn(8, 3), torch.randn(8)
    >>> out = net(x)
    >>> b = MGDAUB(["a", "b"], MGDAUB.Options())
    >>> _ = b.backward({"a": ((out[0] - y) ** 2).mean(), "b": ((out[1] + y) ** 2).mean()}, net)
    >>> net.last_shared_features is None, round(sum(b.current_weights().values()), 6)
    (True, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mtlkit.balancing.base import BALANCERS
from mtlkit.balancing.gradient import assign_flat_grad, split_parameters
from mtlkit.balancing.mgda import MGDA, MGDAOptions
from mtlkit.balancing.touched_rows import accumulate_grad
from mtlkit.errors import ConfigError
from mtlkit.protocols import TrainableModel


def expose_shared_features(model: TrainableModel, module: nn.Module):
    """Set ``model.last_shared_features`` to ``module``'s output at every forward with gradients on.

    Returns the hook's handle (``handle.remove()`` undoes it). In evaluation (no grad) nothing is
    kept, so no graph outlives its step.
    """

    def hook(_module, _inputs, output):
        if torch.is_grad_enabled():
            model.last_shared_features = output

    return module.register_forward_hook(hook)


class MGDAUBOptions(MGDAOptions):
    fallback_to_parameters: bool = False


@BALANCERS.register("mgda_ub")
class MGDAUB(MGDA):
    Options = MGDAUBOptions
    options: MGDAUBOptions
    _downstream: dict[tuple[int, ...], set[int]]
    needs_shared_features = True  # for the trainer: ask the model to keep its shared representation

    def __init__(self, task_names, options, loss_weights=None) -> None:
        super().__init__(task_names, options, loss_weights)
        object.__setattr__(self, "_downstream", {})  # shared-parameter ids -> ids downstream of Z (not state)

    def backward(self, losses: Mapping[str, Tensor], model: TrainableModel) -> Tensor:
        features = model.last_shared_features
        if features is not None:
            model.last_shared_features = None
            features = [features] if isinstance(features, Tensor) else list(features)
            features = [z for z in features if z.requires_grad] or None  # e.g. raw inputs: nothing to differentiate
        if features is None:
            if self.options.fallback_to_parameters:
                return super().backward(losses, model)
            raise ConfigError(
                "balancer 'mgda_ub' needs the model to expose the shared representation of the current "
                "forward pass as `model.last_shared_features` (a tensor computed from shared parameters); this "
                "model does not (use balancer 'mgda', or options {fallback_to_parameters: true})"
            )
        rows, objectives, f = self.objectives(losses)
        shared, other = split_parameters(model)
        if not rows:
            return f.sum()
        # Shared parameters that Z does not depend on (gates read after Z) are found by the first
        # step's backward from Z and remembered: the model's structure does not change.
        key = tuple(id(p) for p in shared)
        downstream_ids = self._downstream.get(key)
        downstream = [p for p in shared if id(p) in downstream_ids] if downstream_ids is not None else []
        # One pass per task gives its row of the Jacobian w.r.t. Z *and* its gradients of the
        # downstream and task-specific parameters, so the heads are traversed once, not three times.
        extra = [*downstream, *other]
        sizes = [z.numel() for z in features]
        jac = features[0].new_empty(len(rows), sum(sizes))
        per_task: list[tuple[Tensor | None, ...]] = []
        for i, objective in enumerate(objectives):
            grads = torch.autograd.grad(objective, [*features, *extra], retain_graph=True, allow_unused=True)
            for block, g in zip(torch.split(jac[i], sizes), grads[: len(features)]):
                block.copy_(g.reshape(-1)) if g is not None else block.zero_()
            per_task.append(grads[len(features):])
        # The (k, B·d) Jacobian is large; work on its k × k Gramian and never copy it again.
        index = torch.tensor(rows, device=jac.device)
        gramian = jac.new_zeros(len(self.task_names), len(self.task_names))
        gramian[index.unsqueeze(1), index] = jac @ jac.T
        present = gramian.diagonal() > 0
        w = self.weights(gramian, present).to(jac)
        w = torch.where(present, w, torch.zeros_like(w))
        self.last_weights = w.detach()
        direction = torch.split(w[index] @ jac, sizes)
        upstream = [p for p in shared if downstream_ids is None or id(p) not in downstream_ids]
        grads = torch.autograd.grad(features, upstream, grad_outputs=[d.view_as(z) for d, z in zip(direction, features)],
                                    retain_graph=downstream_ids is None, allow_unused=True)
        unused: list[Tensor] = []
        for p, g in zip(upstream, grads):
            if g is None:
                unused.append(p)
            else:
                accumulate_grad(p, g)  # a COO gradient for a sparse table (only its touched rows)
        if downstream_ids is None:  # first step: the plain way, and learn which parameters are downstream
            self._downstream[key] = {id(p) for p in unused}
            if unused:
                torch.autograd.backward((w.detach()[rows] * torch.stack(objectives)).sum(), inputs=unused, retain_graph=bool(other))
            self._backward_others(objectives, other)
            return (f * w.detach()).sum()
        weights = w.detach()[index]
        for j, p in enumerate(extra):
            is_shared = j < len(downstream)  # downstream shared: Σ α_k f_k; task-specific: Σ f_k
            terms = [(t * weights[k]) if is_shared else t for k, t in enumerate(g[j] for g in per_task) if t is not None]
            if terms:
                assign_flat_grad([p], torch.stack(terms).sum(0).reshape(-1))
        return (f * w.detach()).sum()


__all__ = ["MGDAUB", "MGDAUBOptions", "expose_shared_features"]
