"""The synthetic two-task regression data of the MMoE paper (Ma et al., KDD 2018, §3.2).

The task correlation is controlled by ``p``, the cosine between the two tasks' weight vectors:

1. ``u1, u2`` — orthogonal unit vectors in ``R^d``;
2. ``w1 = c·u1``, ``w2 = c·(p·u1 + sqrt(1 − p²)·u2)``;
3. ``x ~ N(0, I_d)``;
4. ``y_i = w_iᵀx + Σ_{j=1..m} sin(α_j·w_iᵀx + β_j) + ε_i``, with ``α_j, β_j ~ N(0, 1)`` shared by
   both tasks and ``ε_i ~ N(0, 0.01)`` (variance 0.01).

With ``m = 0`` the labels are linear and their Pearson correlation is ``p·c² / (c² + 0.01)``,
i.e. ``p`` up to the noise. The sine terms make the relation non-linear, so the label
correlation is lower than ``p`` but still rises with it.

Example:
    >>> table = mmoe_synthetic(n=2000, d=10, p=0.9, seed=0)
    >>> table.num_rows, table.column_names[-2:]
    (2000, ['y1', 'y2'])
    >>> import numpy as np
    >>> linear = mmoe_synthetic(n=20000, d=10, m=0, p=0.5, seed=1)
    >>> round(float(np.corrcoef(linear["y1"].to_numpy(), linear["y2"].to_numpy())[0, 1]), 1)
    0.5
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from mtlkit.data.datasets import DatasetSplits
from mtlkit.data.datasets.registry import DATASETS, BuiltinDataset, DatasetOptions
from mtlkit.data.schema import NumericFeature, SchemaSpec
from mtlkit.data.split import seeded_split
from mtlkit.tasks import Task, TaskKind

NOISE_VARIANCE = 0.01


def mmoe_synthetic(n: int = 10_000, d: int = 100, c: float = 1.0, m: int = 10, p: float = 0.5, seed: int = 0) -> pa.Table:
    """``n`` rows of features ``x0 … x{d-1}`` and labels ``y1``, ``y2`` (see the module docstring)."""
    if not -1.0 <= p <= 1.0:
        raise ValueError(f"correlation p must lie in [-1, 1], got {p}")
    if d < 2:
        raise ValueError("d must be at least 2 (two orthogonal directions)")
    rng = np.random.default_rng(seed)
    # Orthonormalise two Gaussian vectors (QR) to get u1 ⟂ u2, both of unit length.
    u, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    u1, u2 = u[:, 0], u[:, 1]
    w1 = c * u1
    w2 = c * (p * u1 + np.sqrt(1.0 - p * p) * u2)
    alpha = rng.standard_normal(m)
    beta = rng.standard_normal(m)
    x = rng.standard_normal((n, d))

    def label(w: np.ndarray) -> np.ndarray:
        z = x @ w
        waves = np.sin(np.outer(z, alpha) + beta).sum(axis=1) if m else 0.0
        return z + waves + rng.normal(0.0, np.sqrt(NOISE_VARIANCE), n)

    y1, y2 = label(w1), label(w2)
    columns = {f"x{i}": x[:, i].astype(np.float32) for i in range(d)}
    return pa.table({**columns, "y1": y1, "y2": y2})


def mmoe_synthetic_tasks() -> list[Task]:
    return [Task(name="y1", kind=TaskKind.REGRESSION), Task(name="y2", kind=TaskKind.REGRESSION)]


def mmoe_synthetic_schema(d: int = 100) -> SchemaSpec:
    # x is already standard normal: no rescaling, so the generator's geometry is kept.
    return SchemaSpec(numeric=[NumericFeature(name=f"x{i}", transform="none") for i in range(d)])


class MMoESyntheticOptions(DatasetOptions):
    n: int = Field(default=10_000, ge=10)
    d: int = Field(default=100, ge=2)
    c: float = 1.0
    m: int = Field(default=10, ge=0)
    p: float = Field(default=0.5, ge=-1.0, le=1.0)
    seed: int = Field(default=0, ge=0)


def _load(options: MMoESyntheticOptions) -> DatasetSplits:
    parts = seeded_split(mmoe_synthetic(**options.model_dump()), {"validation": 0.1, "test": 0.1}, seed=options.seed)
    return DatasetSplits(parts["train"], parts["validation"], parts["test"], mmoe_synthetic_tasks(), mmoe_synthetic_schema(options.d))


DATASETS.register("mmoe_synthetic")(BuiltinDataset(MMoESyntheticOptions, _load))
