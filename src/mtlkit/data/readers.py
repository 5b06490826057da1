"""Read tabular files into Arrow tables (CSV, gzip CSV, TSV, Parquet) with clear errors.

Every problem is a DataError naming the file (and the column and data row where there is one):
a missing or empty file, a malformed one, a column name given twice, bytes in a CSV text column
that are not UTF-8, a damaged Parquet file.

Damaged Parquet files: what can and cannot be detected.

- Pages written with checksums (``write_page_checksum=True`` in pyarrow, which mtlkit's writers
  set; the default of parquet-mr/Spark since 1.12) are verified on read: any changed byte in a
  data page is found.
- Every file: values outside the minimum/maximum the file's metadata records for their column
  chunk, or a different null count, are found (:func:`verify_row_group`); that is what random
  bytes over plain-encoded numbers usually produce. A damaged footer or page header fails to
  decode and is reported too.
- Not detectable without checksums: a change that still decodes to values inside the recorded
  range (e.g. one dictionary index swapped for another, a low bit of a float flipped).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.csv"
    >>> _ = path.write_text("user,click\\nu1,1\\nu2,0\\n")
    >>> read_table(path).column_names
    ['user', 'click']
    >>> _ = path.write_bytes(b"user,click\\nu1,1\\nu\\xff2,0\\n")
    >>> read_table(path)
    Traceback (most recent call last):
    ...
    mtlkit.errors.DataError: ...rows.csv: column 'user' data row 2: bytes that are not UTF-8 text (b'u\\xff2'); save the file as UTF-8
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlkit.errors import DataError

PARQUET_SUFFIXES = {".parquet", ".pq"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
            table = read_parquet(path, columns)
        else:
            delimiter = "\t" if ".tsv" in suffixes else ","
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(include_columns=columns) if columns else None,
            )
            _check_text(table, path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, KeyError) as error:
        raise DataError(f"{path}: cannot be read as a table: {_first_line(error)}") from None
    _check_names(table.column_names, path)
    if table.num_rows == 0:
        raise DataError(f"{path}: has a header but no rows")
    return table


def _check_names(names: list[str], path: Path) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears {names.count(name)} times in the header; column names must be unique")
        seen.add(name)


def _check_text(table: pa.Table, path: Path) -> None:
    """CSV columns the reader typed as binary hold bytes that are not UTF-8: name the first row."""
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            values = column.combine_chunks()
            for row, value in enumerate(values.to_pylist()):  # the error path only
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{path}: column {name!r} data row {row + 1}: bytes that are not UTF-8 text "
                                    f"({value[:40]!r}); save the file as UTF-8") from None


def open_parquet(path: Path) -> pq.ParquetFile:
    """A Parquet file whose page checksums, where written, are verified on every read."""
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: cannot be read as Parquet: {_first_line(error)}") from None


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The whole file, checksums and column statistics verified (see the module docstring)."""
    handle = open_parquet(path)
    try:
        _check_names(handle.schema_arrow.names, path)
        try:
            table = handle.read(columns=columns)
        except OSError as error:
            raise DataError(f"{path}: damaged Parquet file: {_damage(error)}") from None
        start = 0
        for index in range(handle.metadata.num_row_groups):
            metadata = handle.metadata.row_group(index)
            verify_row_group(table.slice(start, metadata.num_rows), metadata, path, start)
            start += metadata.num_rows
        return table
    finally:
        handle.close()


def _damage(error: OSError) -> str:
    what = "a page fails its checksum" if "checksum" in str(error).lower() else "a page cannot be decoded"
    return f"{what} ({_first_line(error)})"


def read_row_group(handle: pq.ParquetFile, path: Path, index: int, first_row: int, columns: list[str] | None = None,
                   **options) -> pa.Table:
    """One row group of an :func:`open_parquet` handle, verified like :func:`read_parquet`'s."""
    try:
        table = handle.read_row_group(index, columns=columns, **options)
    except OSError as error:
        raise DataError(f"{path}: damaged Parquet file: row group {index}: {_damage(error)}") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as error:
        raise DataError(f"{path}: row group {index} cannot be read: {_first_line(error)}") from None
    verify_row_group(table, handle.metadata.row_group(index), path, first_row)
    return table


def verify_row_group(table: pa.Table, metadata: pq.RowGroupMetaData, path: Path, first_row: int = 0) -> None:
    """Values of flat numeric and text columns must lie within the chunk's recorded min/max, with its null count."""
    for i in range(metadata.num_columns):
        chunk = metadata.column(i)
        name, stats = chunk.path_in_schema, chunk.statistics
        if stats is None or name not in table.column_names:
            continue
        column = table.column(name)
        kind = column.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            continue
        if stats.has_null_count and stats.null_count != column.null_count:
            raise DataError(f"{path}: damaged Parquet file: column {name!r} holds {column.null_count} nulls in the rows "
                            f"from data row {first_row + 1}, its metadata records {stats.null_count}")
        if not stats.has_min_max or column.null_count == len(column):
            continue
        low, high = stats.min, stats.max
        try:
            outside = pc.or_(pc.less(column, pa.scalar(low, kind)), pc.greater(column, pa.scalar(high, kind)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
            continue  # statistics of a type we cannot compare with (logical types): not checked
        hits = np.flatnonzero(pc.fill_null(outside, False).to_numpy(zero_copy_only=False))
        if len(hits):
            row = int(hits[0])
            raise DataError(f"{path}: damaged Parquet file: column {name!r} data row {first_row + row + 1}: value "
                            f"{column[row].as_py()!r} lies outside the range [{low!r}, {high!r}] the file's metadata "
                            f"records ({len(hits)} such rows)")


def read_column_names(path: str | Path) -> list[str]:
    """Column names without reading the whole file (used to validate configs early)."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES and path.exists():
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"{path}: cannot be read as Parquet: {error}") from None
    return read_table(path).column_names
