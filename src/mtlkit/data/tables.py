"""In-memory tables in and out of the Python API: a pyarrow ``Table`` or a pandas ``DataFrame``.

mtlkit computes on Arrow. A DataFrame is converted with ``pa.Table.from_pandas(df,
preserve_index=False)``, which shares the column buffers wherever Arrow's layout matches
(numeric columns without nulls, Arrow-backed strings): no copy of the data for those. Results go
back as a DataFrame when a DataFrame came in, on the input's index (so they join to it).

pandas stays optional: it is never imported here. An object can only be a DataFrame if pandas is
already loaded, so the check looks in ``sys.modules``; ``import mtlkit`` does not load pandas.

Example:
    >>> import pyarrow as pa
    >>> as_arrow(pa.table({"x": [1, 2]}), "rows").num_rows
    2
    >>> as_arrow([1, 2], "rows")
    Traceback (most recent call last):
    ...
    mtlkit.errors.DataError: rows: expected a pyarrow Table or a pandas DataFrame, got list
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeGuard, Union

import numpy as np
import pyarrow as pa

from mtlkit.errors import DataError

if TYPE_CHECKING:
    import pandas

TableLike = Union[pa.Table, "pandas.DataFrame"]


def is_dataframe(data: Any) -> TypeGuard[Any]:  # Any: pandas is not imported here
    """Whether ``data`` is a pandas DataFrame (without importing pandas)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(data, pandas.DataFrame)


def is_table_like(data: Any) -> bool:
    return isinstance(data, pa.Table) or is_dataframe(data)


def as_arrow(data: Any, source: str = "data") -> pa.Table:
    """``data`` as a pyarrow Table (a DataFrame's index dropped); DataError naming ``source`` otherwise."""
    if isinstance(data, pa.Table):
        table = data
    elif is_dataframe(data):
        _check_unique([str(name) for name in data.columns], source)  # from_pandas refuses them with a bare ValueError
        try:
            # the index notes from_pandas leaves in the schema go: no index travels on (no copy either way)
            table = pa.Table.from_pandas(data, preserve_index=False).replace_schema_metadata(None)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise DataError(f"{source}: the DataFrame cannot be converted to Arrow: {first}") from None
    else:
        raise DataError(f"{source}: expected a pyarrow Table or a pandas DataFrame, got {type(data).__name__}")
    _check_unique(table.column_names, source)
    return table


def _check_unique(names: list[str], source: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{source}: column {name!r} appears more than once")
        seen.add(name)


def output_like(template: Any, columns: Mapping[str, Any]) -> TableLike:
    """``columns`` (name → array) as a DataFrame on ``template``'s index if it is one, else a pyarrow Table."""
    if is_dataframe(template):
        pandas = sys.modules["pandas"]
        return pandas.DataFrame({name: _numpy_or_series(values) for name, values in columns.items()},
                                index=template.index, copy=False)
    return pa.table({name: values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
                     for name, values in columns.items()})


def _numpy_or_series(values: Any) -> Any:
    """Positional values (numpy) or a Series of the template itself (aligned on its own index)."""
    if isinstance(values, pa.ChunkedArray):
        return values.to_numpy()
    if isinstance(values, pa.Array):
        return values.to_numpy(zero_copy_only=False)
    return values if isinstance(values, np.ndarray) or hasattr(values, "index") else np.asarray(values)


__all__ = ["TableLike", "as_arrow", "is_dataframe", "is_table_like", "output_like"]
