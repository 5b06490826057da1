"""Gradient-level balancing: per-task gradients of the shared part in, one update out.

Every gradient method in mtlkit runs the same steps in :meth:`GradientBalancer.backward`:

1. ``f_k`` — the objective of task ``k`` (``λ_k·L_k`` by default, ``λ_k`` the task's
   ``loss_weight``; DB-MTL uses ``λ_k·log L_k``).
2. ``J`` — the ``T × n`` Jacobian of ``f`` w.r.t. the ``n`` shared parameters
   (``model.shared_parameters()``; every parameter if the model has no such method; of an
   embedding table in sparse-gradient mode only the rows the step touched, see
   :mod:`mtlkit.balancing.touched_rows` and the ``sparse_tables`` option), either in
   ONE vmapped backward, ``torch.autograd.grad(f, shared, grad_outputs=I_T, is_grads_batched=True)``
   (``jacobian="batched"``), or in one backward per task (``"loop"``). ``"auto"`` (default) takes
   the loop on CPU and the batched form on accelerators: on CPU (1 thread, MMoE with T = 2 and
   shared-bottom with T = 5, batch 1024) the vmapped backward was 1.7–1.9× slower than the loop
   — vmap materialises batched copies of saved activations (``aten::copy_`` was 30 % of its
   time) — while on a GPU it replaces T launches of every backward kernel by one (not measured
   here: no GPU on the development machine). The loop starts each backward at the task's own
   scalar loss, so it never sends zeros through the other tasks' towers.
3. ``present_k = ‖J_k‖ > 0``: a task that has no labelled row in the batch (its masked loss is
   exactly 0 with zero gradient) or that is missing from ``losses`` takes no part in the
   aggregation; a step where no task is present leaves the shared gradient at zero, never NaN.
4. ``d = aggregate(J, present)`` is written into the shared parameters' ``.grad`` (a COO
   gradient over the touched rows for a sparse table).
5. ONE backward of ``Σ_k f_k`` restricted (``inputs=``) to the other parameters (towers, heads),
   so each tower gets the gradient of its own task's objective.

Methods that only need the Gramian ``G = J Jᵀ`` subclass :class:`GramianBalancer` and implement
``weights(G, present) → w``; the update is then ``d = wᵀ J``. Everything here stays on the
device: no ``.item()``, ``.cpu()`` or ``.tolist()`` per step (torchjd-backed methods that call a
CPU solver copy the ``T × T`` Gramian once per step; see :mod:`mtlkit.balancing.torchjd_backend`).

Example:
    >>> import torch
    >>> x = torch.ones(2, requires_grad=True)
    >>> f = torch.stack([(torch.tensor([1.0, 0.0]) * x).sum(), (torch.tensor([0.0, 2.0]) * x ** 2).sum()])
    >>> flat_jacobian(f, [x])
    tensor([[1., 0.],
            [0., 4.]])
    >>> flat_jacobian(torch.zeros(2), [x]) is None   # nothing to differentiate
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn

from mtlkit.balancing.base import Balancer, BalancerOptions
from mtlkit.balancing.touched_rows import Columns, dense_columns, touched_rows_jacobian
from mtlkit.nn.embedding_tables import sparse_weights
from mtlkit.protocols import TrainableModel


class GradientOptions(BalancerOptions):
    #: ``"batched"``: one vmapped backward for all tasks; ``"loop"``: one backward per task (same
    #: result); ``"auto"``: loop on CPU, batched on accelerators (see the module docstring).
    jacobian: Literal["auto", "batched", "loop"] = "auto"
    #: Embedding tables in sparse-gradient mode: ``"jacobian"`` — their touched rows are columns
    #: of ``J`` like any shared parameter (:mod:`mtlkit.balancing.touched_rows`); ``"outside"`` —
    #: they are task-shared but left out of ``J`` and get the plain ``Σ_k f_k`` gradient, as the
    #: towers do (a smaller ``J``; the method then balances the dense shared part only).
    sparse_tables: Literal["jacobian", "outside"] = "jacobian"


def split_parameters(model: TrainableModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(shared, other)`` trainable parameters, as the model's :meth:`~mtlkit.protocols.TrainableModel.shared_parameters` says."""
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    seen = {id(p) for p in shared}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return shared, other


def flat_jacobian(outputs: Tensor | Sequence[Tensor], inputs: Sequence[Tensor], mode: str = "auto") -> Tensor | None:
    """The ``(k, n)`` Jacobian of the ``k`` scalars ``outputs`` w.r.t. ``inputs`` (flattened, concatenated).

    Give ``outputs`` as a list of separate scalars when they come from separate branches (task
    losses): a per-task backward then starts at that task's loss instead of at a stacked vector,
    whose backward would send zero gradients through every other task's tower too.
    Returns ``None`` when there is nothing to differentiate. The graph is retained.
    """
    scalars: list[Tensor] | None = None
    if isinstance(outputs, Tensor):
        if not outputs.requires_grad:
            return None
        first, k = outputs, outputs.shape[0]
    else:
        scalars = list(outputs)
        if not scalars or not all(o.requires_grad for o in scalars):
            return None
        first, k = scalars[0], len(scalars)
    if not inputs:
        return None
    if mode == "auto":
        mode = "loop" if first.device.type == "cpu" else "batched"
    if mode == "batched" and k > 1:
        stacked = torch.stack(scalars) if scalars is not None else first
        eye = torch.eye(k, dtype=stacked.dtype, device=stacked.device)
        grads = torch.autograd.grad(stacked, list(inputs), grad_outputs=eye, is_grads_batched=True,
                                    retain_graph=True, allow_unused=True, materialize_grads=True)
        return torch.cat([g.reshape(k, -1) for g in grads], dim=1)
    sizes = [t.numel() for t in inputs]
    jacobian = first.new_empty(k, sum(sizes))  # one copy of each gradient, no cat + stack
    for i in range(k):
        out = scalars[i] if scalars is not None else first[i]
        grads = torch.autograd.grad(out, list(inputs), retain_graph=True, allow_unused=True, materialize_grads=True)
        for block, g in zip(torch.split(jacobian[i], sizes), grads):
            block.copy_(g.reshape(-1))
    return jacobian


def shared_jacobian(outputs: Sequence[Tensor], inputs: Sequence[Tensor], mode: str = "auto",
                    sparse: Sequence[Tensor] = ()) -> tuple[Tensor | None, Columns]:
    """``(J, columns)`` w.r.t. ``inputs``, where those listed in ``sparse`` (embedding-table weights
    in sparse-gradient mode) count only the rows the graph touched (always per task, ``"loop"``:
    see :mod:`mtlkit.balancing.touched_rows`); ``columns.assign(d)`` writes an update back."""
    ids = {id(p) for p in sparse}
    tables = [p for p in inputs if id(p) in ids]
    if not tables:
        return flat_jacobian(list(outputs), list(inputs), mode), dense_columns(inputs)
    return touched_rows_jacobian(outputs, [p for p in inputs if id(p) not in ids], tables)


def assign_flat_grad(params: Sequence[Tensor], flat: Tensor) -> None:
    """Add the flat vector ``flat`` into the ``.grad`` of ``params`` (in order)."""
    chunks = torch.split(flat.detach(), [p.numel() for p in params])
    for p, g in zip(params, chunks):
        g = g.view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)


def masked_softmax(logits: Tensor, present: Tensor) -> Tensor:
    """Softmax over the ``present`` entries; absent ones get 0 (all absent: all 0, never NaN)."""
    shifted = logits - torch.where(present, logits, torch.full_like(logits, -torch.inf)).amax().clamp_min(-1e30)
    e = torch.where(present, shifted.exp(), torch.zeros_like(logits))
    return e / e.sum().clamp_min(1e-30)


class JacobianReducer(Protocol):
    """How data-parallel ranks agree on ``J`` before aggregating it (:mod:`mtlkit.train.distributed`)."""

    def align_columns(self, jacobian: Tensor, columns: Columns) -> tuple[Tensor, Columns]:
        """The same columns (touched table rows) on every rank."""
        ...

    def reduce(self, jacobian: Tensor, objectives: Tensor) -> tuple[Tensor, Tensor]:
        """The rank-averaged ``(T, n)`` Jacobian and ``(T,)`` objectives."""
        ...


class GradientBalancer(Balancer):
    """Base of the gradient methods (see the module docstring for the five steps)."""

    # Declared as the base's type: subclasses narrow fields (e.g. ``sparse_tables: Literal["outside"]``),
    # which makes their option classes' constructors incompatible with ``type[GradientOptions]``.
    Options: ClassVar[type[BalancerOptions]] = GradientOptions
    options: GradientOptions
    lambdas: Tensor
    last_weights: Tensor
    step_objectives: Tensor

    def __init__(self, task_names: Sequence[str], options: GradientOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        self.register_buffer("lambdas", torch.tensor([self.loss_weights[t] for t in self.task_names]), persistent=False)
        # The weights of the last aggregation on the rows of J (ones for methods without weights).
        self.register_buffer("last_weights", torch.ones(len(self.task_names)), persistent=False)

    # -- hooks for subclasses -------------------------------------------------------------------
    def objective(self, loss: Tensor, index: int) -> Tensor:
        """``f_k`` from task ``index``'s scalar loss; the Jacobian and the towers use it."""
        return self.lambdas[index].to(loss) * loss

    def aggregate(self, jacobian: Tensor, present: Tensor) -> Tensor:
        """The shared update ``d`` (n,) from ``J`` (T, n); rows of absent tasks are zero."""
        raise NotImplementedError

    # -- the step ---------------------------------------------------------------------------------
    #: Set by data-parallel training (:func:`mtlkit.train.distributed.reduce_gradient_balancer`):
    #: every rank then aggregates the rank-averaged ``J`` and objectives.
    jacobian_reducer: JacobianReducer | None = None

    def backward(self, losses: Mapping[str, Tensor], model: TrainableModel) -> Tensor:
        rows, objectives, f = self.objectives(losses)
        shared, other = split_parameters(model)
        tables = sparse_weights(model)
        if tables and self.options.sparse_tables == "outside":
            ids = {id(p) for p in tables}
            shared = [p for p in shared if id(p) not in ids]
            other = [*other, *(p for p in tables if p.requires_grad)]
        jac, columns = shared_jacobian(objectives, shared, self.options.jacobian, tables) if rows else (None, None)
        if jac is not None and columns is not None:
            if self.jacobian_reducer is not None and columns.sparse:  # one union of touched rows on every rank
                jac, columns = self.jacobian_reducer.align_columns(jac, columns)
            full = jac.new_zeros(len(self.task_names), jac.shape[1])
            full[rows] = jac
            if self.jacobian_reducer is not None:
                full, self.step_objectives = self.jacobian_reducer.reduce(full, self.step_objectives)
            present = full.pow(2).sum(1) > 0
            columns.assign(self.aggregate(full, present))
        self._backward_others(objectives, other)
        return (f * self.last_weights.to(f)).sum()

    def objectives(self, losses: Mapping[str, Tensor]) -> tuple[list[int], list[Tensor], Tensor]:
        """``(rows, [f_k for k in rows], f)``: the tasks attached to a graph, their objectives as
        separate scalars (a per-task backward then visits only that task's tower), and all ``T``
        objectives as a detached vector (0 for absent tasks), also kept as ``step_objectives``."""
        rows = [i for i, t in enumerate(self.task_names) if t in losses and losses[t].requires_grad]
        objectives = [self.objective(losses[self.task_names[i]], i) for i in rows]
        reference = next(iter(losses.values()))
        f = reference.new_zeros(len(self.task_names))
        if rows:
            f[rows] = torch.stack(objectives).detach().to(f)
        self.step_objectives = f  # for methods that normalise by the loss values (MGDA "loss")
        return rows, objectives, f

    def _backward_others(self, objectives: Sequence[Tensor], other: Sequence[Tensor]) -> None:  # an instance hook: ExcessMTL weights it
        if other and objectives:
            torch.autograd.backward(torch.stack(list(objectives)).sum(), inputs=list(other))

    def current_weights(self) -> dict[str, float]:
        """``λ_k · w_k``: the weight of task k's loss in the last shared update (syncs: call per log interval)."""
        return dict(zip(self.task_names, (self.lambdas * self.last_weights).tolist()))


class GramianBalancer(GradientBalancer):
    """A gradient method whose update is ``d = wᵀJ`` with ``w = weights(J Jᵀ, present)``."""

    def weights(self, gramian: Tensor, present: Tensor) -> Tensor:
        raise NotImplementedError

    def aggregate(self, jacobian: Tensor, present: Tensor) -> Tensor:
        w = self.weights(jacobian @ jacobian.T, present).to(jacobian)
        w = torch.where(present, w, torch.zeros_like(w))
        self.last_weights = w.detach()
        return w @ jacobian


__all__ = [
    "GradientBalancer",
    "GradientOptions",
    "GramianBalancer",
    "assign_flat_grad",
    "flat_jacobian",
    "masked_softmax",
    "shared_jacobian",
    "split_parameters",
]
