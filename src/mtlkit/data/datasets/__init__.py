"""Dataset loaders and synthetic generators, and the plumbing the loaders share.

Every loader returns train / validation / test Arrow tables with the tasks and the feature
schema (:class:`DatasetSplits`, or census's own dataclass). :func:`source_files` finds a
dataset's files under a local ``root`` or downloads them, verified by SHA-256, into the cache
(``$MTLKIT_CACHE`` or ``~/.cache/mtlkit``); :func:`read_csv` and :func:`check_binary` read
them with errors that name the file, column and row.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "log.csv").write_text("click,price\\n1,2.5\\n0,1.0\\n")
    >>> paths = source_files("demo", root, ["log.csv"])
    >>> table = read_csv(paths["log.csv"], required=["click", "price"])
    >>> check_binary(table, ["click"], paths["log.csv"]).num_rows
    2
    >>> source_files("demo", root, ["other.csv"])
    Traceback (most recent call last):
    ...
    mtlkit.errors.DataError: .../other.csv: no such file (demo root must hold other.csv)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mtlkit.data.download import cache_dir, fetch
from mtlkit.data.schema import SchemaSpec
from mtlkit.errors import DataError
from mtlkit.tasks import Task


@dataclass
class DatasetSplits:
    """What a built-in dataset gives a run: three splits, the tasks and the feature spec."""

    train: pa.Table
    validation: pa.Table
    test: pa.Table
    tasks: list[Task]
    schema: SchemaSpec


def source_files(
    dataset: str,
    root: str | Path | None,
    names: Sequence[str],
    alternates: Mapping[str, Sequence[str]] | None = None,
    base_url: str | None = None,
    sha256: Mapping[str, str] | None = None,
    no_source: str = "it has no public download",
) -> dict[str, Path]:
    """Path of each file in ``names``: under ``root`` (or one of its ``alternates``), else downloaded.

    A download fetches ``base_url + name`` into the cache and needs the file's SHA-256 (of the
    uncompressed content for ``.gz``) in ``sha256``: an unverified download is never used.
    """
    alternates = alternates or {}
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such directory ({dataset} root must hold {', '.join(names)})")
        paths = {}
        for name in names:
            found = next((root / c for c in [name, *alternates.get(name, ())] if (root / c).is_file()), None)
            if found is None:
                raise DataError(f"{root / name}: no such file ({dataset} root must hold {', '.join(names)})")
            paths[name] = found
        return paths
    if base_url is None:
        raise DataError(f"{dataset}: {no_source}; download the files by hand and pass root")
    digests = dict(sha256 or {})
    target = cache_dir(dataset)
    paths = {}
    for name in names:
        if name not in digests:
            raise DataError(
                f"{dataset}: no pinned sha256 for {base_url}{name}: pass sha256={{{name!r}: '<hex>'}} "
                f"for a copy you trust, or download it by hand and pass root"
            )
        paths[name] = fetch(base_url + name, target / name, digests[name], uncompressed=name.endswith(".gz"))
    return paths


def read_csv(path: Path, required: Sequence[str] = (), types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """A CSV with a header row; ``required`` columns must be there, ``types`` fixes some column types."""
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=dict(types or {})))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: cannot be read as CSV: {message}") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r}")
    if table.num_rows == 0:
        raise DataError(f"{path}: has a header but no rows")
    return table


def check_binary(table: pa.Table, columns: Sequence[str], source: str | Path) -> pa.Table:
    """Raise naming the first row whose label in ``columns`` is not 0 or 1; return ``table``."""
    for name in columns:
        values = pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)
        bad = np.isnan(values) | ((values != 0) & (values != 1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: column {name!r} data row {row + 1}: value {values[row]:g} (expected 0 or 1)")
    return table


# Each module registers its dataset (mtlkit.data.datasets.registry.DATASETS): one line adds one.
from mtlkit.data.datasets import aliccp, aliexpress, census, kuairand, shortvideo, synthetic  # noqa: E402
from mtlkit.data.datasets.registry import DATASETS, load_dataset  # noqa: E402
