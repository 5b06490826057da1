"""Write a prediction table as CSV, TSV, Parquet, JSON lines or JSON, chosen by the file's suffix.

Any other suffix is refused before any work starts (:func:`output_format`), so ``--out p.json``
never silently gets CSV. Files are written atomically (:func:`mtlkit.outputs.atomic_output`);
Parquet files carry page checksums, which :func:`mtlkit.data.readers.read_table` verifies.
JSON holds one object per row (``.jsonl``: one per line; ``.json``: one array); float32 values
are written with their shortest round-trip digits, and NaN/inf as ``null`` (JSON has neither).

Example:
    >>> import tempfile, pathlib, pyarrow as pa
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
    >>> write_table(pa.table({"id": ["a", "b"], "click": pa.array([0.25, float("nan")], pa.float32())}), path)
    >>> print(path.read_text(), end="")
    {"id": "a", "click": 0.25}
    {"id": "b", "click": null}
    >>> output_format("p.xlsx")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: --out p.xlsx: unknown output format '.xlsx'; use .csv, .tsv, .parquet, .pq, .jsonl or .json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc

from mtlkit.errors import ConfigError
from mtlkit.outputs import atomic_output

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "json"}


def output_format(path: str | Path, option: str = "--out") -> str:
    """The format for ``path``'s suffix; a ConfigError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        what = f"unknown output format {suffix!r}" if suffix else "no file suffix"
        raise ConfigError(f"{option} {path}: {what}; use {', '.join(list(FORMATS)[:-1])} or {list(FORMATS)[-1]}")
    return FORMATS[suffix]


def _json_ready(table: pa.Table) -> pa.Table:
    """Floats as float64 with float32's shortest digits; non-finite values null."""
    columns = []
    for column in table.columns:
        if pa.types.is_floating(column.type):
            if column.type != pa.float64():  # 0.1f is 0.10000000149 as a double: go through its decimal text
                column = pc.cast(pc.cast(column, pa.string()), pa.float64())
            column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, pa.float64()))
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _write_json(table: pa.Table, f: IO[str], lines: bool) -> None:
    first = True
    f.write("" if lines else "[")
    for batch in _json_ready(table).to_batches(max_chunksize=65_536):
        for row in batch.to_pylist():
            text = json.dumps(row, ensure_ascii=False, allow_nan=False, default=str)
            f.write(text + "\n" if lines else ("" if first else ",\n") + text)
            first = False
    f.write("" if lines else "]\n")


def write_table(table: pa.Table, path: str | Path, option: str = "--out") -> None:
    """Write ``table`` to ``path`` in the format its suffix names, atomically."""
    kind = output_format(path, option)
    with atomic_output(path, option) as tmp:
        if kind == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp, write_page_checksum=True)
        elif kind in ("csv", "tsv"):
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, tmp, pacsv.WriteOptions(delimiter="\t" if kind == "tsv" else ","))
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                _write_json(table, f, lines=kind == "jsonl")


__all__ = ["FORMATS", "output_format", "write_table"]
