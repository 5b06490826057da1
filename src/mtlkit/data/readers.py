"""Read tabular files into Arrow tables (CSV, gzip CSV, TSV, Parquet) with clear errors.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.csv"
    >>> _ = path.write_text("user,click\\nu1,1\\nu2,0\\n")
    >>> read_table(path).column_names
    ['user', 'click']
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlkit.errors import DataError

PARQUET_SUFFIXES = {".parquet", ".pq"}


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a whole file; the format follows the suffix (``.parquet``, ``.csv``, ``.tsv``, ``.gz``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes and suffixes[-1] in PARQUET_SUFFIXES:
            table = pq.read_table(path, columns=columns)
        else:
            delimiter = "\t" if ".tsv" in suffixes else ","
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(include_columns=columns) if columns else None,
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: cannot be read as a table: {message}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: has a header but no rows")
    return table


def read_column_names(path: str | Path) -> list[str]:
    """Column names without reading the whole file (used to validate configs early)."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES and path.exists():
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"{path}: cannot be read as Parquet: {error}") from None
    return read_table(path).column_names
