"""A study whose answer is known: three related tasks and one unrelated task.

Tasks ``y1``, ``y2``, ``y3`` follow the MMoE paper's generator (Ma et al., KDD 2018, §3.2,
:mod:`mtlkit.data.datasets.synthetic`) extended to three tasks on one latent structure: on
features ``x``, ``w_i = c·(p·u0 + sqrt(1 − p²)·u_i)`` with orthonormal ``u0 … u3``, and
``y_i = w_iᵀx + Σ_j sin(α_j·w_iᵀx + β_j) + ε_i`` with shared ``α, β``. Task ``noise`` is built the
same way from independent features ``z`` (its own weights and waves), so it shares nothing with
the others: a grouping must put it alone, and training it with them cannot help them.

Example:
    >>> table = planted_table(n=500, d=8, seed=0)
    >>> table.column_names[-4:]
    ['y1', 'y2', 'y3', 'noise']
    >>> import numpy as np
    >>> c = np.corrcoef([table[k].to_numpy() for k in ("y1", "y2", "y3", "noise")])
    >>> bool(c[0, 1] > 0.5 and abs(c[0, 3]) < 0.15)
    True
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

RELATED = ("y1", "y2", "y3")
UNRELATED = "noise"


def _labels(x: np.ndarray, weights: list[np.ndarray], m: int, rng: np.random.Generator) -> list[np.ndarray]:
    alpha, beta = rng.standard_normal(m), rng.standard_normal(m)
    out = []
    for w in weights:
        z = x @ w
        out.append(z + np.sin(np.outer(z, alpha) + beta).sum(axis=1) + rng.normal(0.0, 0.1, len(z)))
    return out


def planted_table(n: int = 6000, d: int = 16, p: float = 0.95, m: int = 2, seed: int = 0) -> pa.Table:
    """``n`` rows: features ``x0…`` (related tasks) and ``z0…`` (the unrelated task), labels y1, y2, y3, noise."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((d, 4)))
    related = [p * u[:, 0] + np.sqrt(1.0 - p * p) * u[:, i] for i in (1, 2, 3)]
    x = rng.standard_normal((n, d))
    z = rng.standard_normal((n, d))
    ys = _labels(x, related, m, rng)
    v, _ = np.linalg.qr(rng.standard_normal((d, 1)))
    (noise,) = _labels(z, [v[:, 0]], m, rng)
    columns = {**{f"x{i}": x[:, i].astype(np.float32) for i in range(d)}, **{f"z{i}": z[:, i].astype(np.float32) for i in range(d)}}
    return pa.table({**columns, **dict(zip(RELATED, ys)), UNRELATED: noise})


def planted_config(train: str, d: int = 16) -> dict:
    """A base run config for :func:`planted_table`'s file: a shared-bottom model on every feature, four regression tasks."""
    return {
        "data": {"train": train, "split": {"validation": 0.2, "test": 0.2, "seed": 0}},
        "features": {"numeric": [{"name": f"{k}{i}", "transform": "none"} for k in "xz" for i in range(d)]},
        "tasks": [{"name": t, "kind": "regression"} for t in (*RELATED, UNRELATED)],
        "model": {"backbone": "shared_bottom", "options": {"hidden": [32]}, "tower": [8]},
        "train": {"epochs": 6, "batch_size": 128, "lr": 0.003, "patience": 3, "progress": False},
    }


def main(argv: list[str]) -> None:  # python -m mtlkit.study.planted OUT.parquet [rows]
    out = Path(argv[0])
    import pyarrow.parquet as pq

    pq.write_table(planted_table(n=int(argv[1]) if len(argv) > 1 else 6000), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
