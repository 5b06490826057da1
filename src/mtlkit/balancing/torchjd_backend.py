"""The one adapter through which mtlkit uses torchjd's aggregators.

`torchjd <https://github.com/TorchJD/torchjd>`_ (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024) implements many Jacobian aggregators. mtlkit computes the
Jacobian itself (:mod:`mtlkit.balancing.gradient`: one batched backward, shared part only, masked
tasks removed) and hands torchjd only what each aggregator needs. A method file subclasses
:class:`TorchJDBalancer`, sets ``consumes`` and implements ``make(task_indices)``, which returns
the torchjd object for the tasks present in the step:

* ``"gramian"`` — a torchjd ``Weighting`` of the Gramian (UPGrad, DualProj, PCGrad, IMTL-G,
  Aligned-MTL, CAGrad, GradVac): called on the ``k × k`` Gramian of the present tasks;
* ``"factor"`` — a weighting of a matrix that only uses it through ``M Mᵀ`` and ``‖wᵀM‖``
  (Nash-MTL): called on ``R`` with ``R Rᵀ = G`` (``k × k``), which gives the same weights as
  the ``k × n`` Jacobian at a fraction of the cost;
* ``"jacobian"`` — an ``Aggregator`` that needs the coordinates (GradDrop): called on ``J``.

Gramian weightings are scale-invariant (``w(cG) = w(G)``), so the adapter hands them the Gramian
divided by its trace. This matters: torchjd's projectors and CAGrad treat a Gramian whose trace is
below ``norm_eps = 1e-4`` as zero (UPGrad then returns the plain mean, CAGrad a zero update) —
i.e. whenever all gradient norms are below ~0.01, common late in training — and add
``reg_eps = 1e-4`` to the diagonal of the normalised Gramian, which, measured on random
4-task Jacobians whose gradient norms differ by 100×, let UPGrad's update reach a cosine of −0.8
with the smallest task's gradient. mtlkit's UPGrad/DualProj start at ``reg_eps = 1e-10`` and only
raise it (×1000, up to 1e-4) if quadprog reports the matrix as not positive definite.

Gramian and factor weightings run on a float64 CPU copy of the ``T × T`` Gramian because
torchjd's solvers (quadprog, cvxpy) are NumPy-based: on an accelerator that is one device→host
copy of ``T²`` numbers per step (a sync; the price of these methods), on CPU nothing. Absent
tasks (no labelled row, zero gradient) are removed before the call and get weight 0. Weights
that come back non-finite (a failed solve) are replaced by the uniform weights of the present
tasks, with one warning. Stateful torchjd objects are kept outside the module tree (so
``state_dict`` keys never change shape) and their state goes through ``get_extra_state``.

torchjd is imported when such a balancer is built; if it (or the extra an aggregator needs) is
missing, a :class:`~mtlkit.errors.ConfigError` names the ``pip install`` command.

Example:
    >>> import torch
    >>> from mtlkit.balancing.pcgrad import PCGrad
    >>> b = PCGrad(["a", "b"], PCGrad.Options())
    >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])   # g1 = (1, 0), g2 = (-1, 1): conflicting
    >>> b.weights(G, torch.tensor([True, True]))     # d = wᵀJ, computed by torchjd on the Gramian
    tensor([2.0000, 1.5000])
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from mtlkit.balancing.gradient import GradientOptions, GramianBalancer
from mtlkit.errors import ConfigError

INSTALL = "pip install 'torchjd[{extra}]>=0.18'"


def import_torchjd(method: str, extra: str = "") -> Any:
    """``torchjd.aggregation``, or a ConfigError naming the install command."""
    try:
        return importlib.import_module("torchjd.aggregation")
    except ImportError:
        command = INSTALL.format(extra=extra) if extra else "pip install 'torchjd>=0.18'"
        raise ConfigError(f"balancer {method!r} uses torchjd, which is not installed: {command}") from None


def call_with_regularisation(engine: Any, stat: Tensor, reg_eps: float) -> Tensor:
    """Call a quadprog-projector weighting with ``reg_eps``, raised ×1000 (up to 1e-4) while it fails."""
    while True:
        engine.projector.reg_eps = reg_eps
        try:
            return engine(stat)
        except ValueError:
            if reg_eps >= 1e-4:
                raise
            reg_eps = min(reg_eps * 1000, 1e-4)


def gramian_factor(gramian: Tensor) -> Tensor:
    """``R`` with ``R Rᵀ = G`` (from the eigendecomposition; G is PSD)."""
    values, vectors = torch.linalg.eigh(gramian)
    return vectors * values.clamp_min(0).sqrt()


class TorchJDOptions(GradientOptions):
    pass


class TorchJDBalancer(GramianBalancer):
    """Base of the torchjd-backed methods (see the module docstring)."""

    Options = TorchJDOptions
    _engines: dict[tuple[int, ...], Any]
    consumes: ClassVar[Literal["gramian", "factor", "jacobian"]] = "gramian"
    scale_invariant: ClassVar[bool] = True  # weights unchanged when G is scaled: pass G / trace(G)
    method: ClassVar[str] = ""
    extra: ClassVar[str] = ""  # the torchjd extra the aggregator needs, for the error message

    def __init__(self, task_names: Sequence[str], options: TorchJDOptions, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, options, loss_weights)
        self.aggregation = import_torchjd(self.method, self.extra)
        object.__setattr__(self, "_engines", {})  # plain dict: never part of state_dict
        self._warned = False
        try:
            self.engine(tuple(range(len(self.task_names))))  # fail now, not at the first step
        except ImportError as error:
            raise ConfigError(f"balancer {self.method!r}: {error}") from None

    # -- what a method file provides --------------------------------------------------------------
    def make(self, tasks: tuple[int, ...]) -> Any:
        """The torchjd Weighting/Aggregator for the present tasks ``tasks`` (indices, ascending)."""
        raise NotImplementedError

    def preference(self, values: Mapping[str, float] | None, tasks: tuple[int, ...]) -> Tensor | None:
        """A ``pref_vector`` option (task → weight) restricted to ``tasks``, or ``None``."""
        if values is None:
            return None
        unknown = sorted(set(values) - set(self.task_names))
        if unknown:
            raise ConfigError(f"balancer {self.method!r}: pref_vector names unknown tasks {unknown}")
        return torch.tensor([float(values.get(self.task_names[i], 1.0)) for i in tasks], dtype=torch.float64)

    # -- the adapter ---------------------------------------------------------------------------------
    def engine(self, tasks: tuple[int, ...]) -> Any:
        if tasks not in self._engines:
            self._engines[tasks] = self.make(tasks)
        return self._engines[tasks]

    def aggregate(self, jacobian: Tensor, present: Tensor) -> Tensor:
        if self.consumes == "jacobian":
            return self.engine(tuple(range(len(self.task_names))))(jacobian)
        return super().aggregate(jacobian, present)

    def weights(self, gramian: Tensor, present: Tensor) -> Tensor:
        g = gramian.detach().to("cpu", torch.float64)
        mask = present.cpu()
        return self.solve(g, mask).to(device=gramian.device, dtype=gramian.dtype)

    def solve(self, gramian: Tensor, present: Tensor) -> Tensor:
        """CPU float64 weights (T,) from the full Gramian; absent tasks get 0."""
        tasks = tuple(int(i) for i in torch.nonzero(present).flatten())
        w = torch.zeros(len(present), dtype=torch.float64)
        if not tasks:
            return w
        sub = gramian[list(tasks)][:, list(tasks)]
        if self.scale_invariant:
            sub = sub / sub.diagonal().sum()
        stat = gramian_factor(sub) if self.consumes == "factor" else sub
        sub_w = self.call(self.engine(tasks), stat).to(torch.float64)
        if not torch.isfinite(sub_w).all():
            if not self._warned:
                warnings.warn(f"balancer {self.method!r}: the solver returned non-finite weights; "
                              "using uniform weights for this step", RuntimeWarning, stacklevel=2)
                self._warned = True
            sub_w = torch.full((len(tasks),), 1.0 / len(tasks), dtype=torch.float64)
        w[list(tasks)] = sub_w
        return w

    def call(self, engine: Any, stat: Tensor) -> Tensor:
        return engine(stat)

    # -- state ---------------------------------------------------------------------------------------
    def get_extra_state(self) -> Any:
        return {}

    def set_extra_state(self, state: Any) -> None:
        pass


__all__ = ["TorchJDBalancer", "TorchJDOptions", "call_with_regularisation", "gramian_factor", "import_torchjd"]
