"""JSON request rows → an Arrow table typed by the fitted schema, with 4xx errors for bad input.

Serving must encode exactly as offline prediction does, so rows become an Arrow table that
:meth:`FittedSchema.encode` reads like a file: a column per feature, its type chosen from the values
the way a CSV/Parquet reader would type it (all strings → string, all integers → int64, numbers →
float64). Every feature of the schema is required in every row (``null`` is an explicit missing
value); bias features (position, device) and unknown keys are ignored: serving never uses them.
Unseen categories are not errors: the schema maps them to the OOV id 0.

Accepted values: categorical — string, number, boolean or null; numeric — number or null
(``NaN`` counts as missing); sequence — a list of strings/numbers, null (empty history), or, when
the feature has a ``separator``, a delimited string. Everything Arrow could refuse is refused
here, naming the row and feature: a lone surrogate (``"\\ud800"``, not Unicode), an integer beyond
int64 as a category or beyond the float range as a number.

Two steps, so concurrent requests share the Arrow work (:mod:`mtlkit.serve.batching`):
:func:`validate_rows` checks and types one request's rows into a :class:`RowBlock` (plain
lists for scalar columns), :func:`to_table` turns blocks of the same column types into one
table. :func:`rows_to_table` is both, for one request.

Example:
    >>> import pyarrow as pa
    >>> from mtlkit.data.schema import SchemaSpec, CategoricalFeature, NumericFeature
    >>> schema = SchemaSpec(categorical=[CategoricalFeature(name="city")],
    ...                     numeric=[NumericFeature(name="age")]).fit(pa.table({"city": ["a", "b"], "age": [20.0, 30.0]}))
    >>> table = rows_to_table(schema, [{"city": "a", "age": 25}, {"city": "zz", "age": None}])
    >>> table.column("city").to_pylist(), table.column("age").to_pylist()
    (['a', 'zz'], [25.0, None])
    >>> rows_to_table(schema, [{"city": "a"}])
    Traceback (most recent call last):
    ...
    mtlkit.serve.rows.RequestError: rows[0]: missing feature 'age' (send null for a missing value)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from mtlkit.data.schema import FittedSchema, FittedSequence
from mtlkit.errors import MtlkitError

_ABSENT = object()
# A column: built (sequences), or its Arrow type and values that are known to convert (scalars).
Column: TypeAlias = pa.Array | tuple[pa.DataType, list]


class RequestError(MtlkitError):
    """A bad request: ``status`` is the HTTP status (4xx) to answer with, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RowBlock:
    """One request's rows, validated and typed column by column (see :func:`to_table`)."""

    num_rows: int
    columns: dict[str, Column]

    @property
    def signature(self) -> tuple:
        """The column types, as ids (cheap to hash): blocks with equal signatures concatenate into one table."""
        types = [c.type if isinstance(c, pa.Array) else c[0] for c in self.columns.values()]
        return tuple((t.id, t.value_type.id) if pa.types.is_list(t) else t.id for t in types)


def validate_rows(schema: FittedSchema, rows: Sequence[dict[str, Any]]) -> RowBlock:
    """One typed column per feature of ``schema``; RequestError (422) names the row and feature at fault."""
    columns: dict[str, Column] = {}
    for feature in schema.categorical:
        columns[feature.name] = _categorical_column(feature.name, _values(rows, feature.name))
    for numeric in schema.numeric:
        columns[numeric.name] = _numeric_column(numeric.name, _values(rows, numeric.name))
    for seq in schema.sequences:
        columns[seq.name] = _sequence_column(seq, _values(rows, seq.name))
    return RowBlock(len(rows), columns)


def to_table(blocks: Sequence[RowBlock]) -> pa.Table:
    """The rows of ``blocks`` (all of the same :attr:`RowBlock.signature`) as one table, in order."""
    columns: dict[str, pa.Array] = {}
    for name, first in blocks[0].columns.items():
        parts = [block.columns[name] for block in blocks]
        if isinstance(first, pa.Array):
            columns[name] = first if len(parts) == 1 else pa.concat_arrays(parts)
        else:
            values = first[1] if len(parts) == 1 else list(chain.from_iterable(part[1] for part in parts))
            columns[name] = pa.array(values, type=first[0])
    return pa.table(columns)


def rows_to_table(schema: FittedSchema, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """:func:`validate_rows` then :func:`to_table`: one request's rows as a typed table."""
    return to_table([validate_rows(schema, rows)])


# -- columns ----------------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object" if isinstance(value, dict) else type(value).__name__


def _values(rows: Sequence[dict[str, Any]], name: str) -> list[Any]:
    values = [row.get(name, _ABSENT) for row in rows]
    for i, value in enumerate(values):
        if value is _ABSENT:
            raise RequestError(422, f"rows[{i}]: missing feature {name!r} (send null for a missing value)")
    return values


def _wrong_type(values: Sequence[Any], name: str, ok: tuple[type, ...], expected: str) -> None:
    for i, value in enumerate(values):
        if value is not None and not isinstance(value, ok):
            raise RequestError(422, f"rows[{i}]: feature {name!r} must be {expected}, got {json_type(value)}")


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _check_strings(values: Sequence[Any], name: str, rows: Sequence[Any] | None = None) -> None:
    """RequestError naming the row of the first string Arrow cannot store (a lone surrogate, ``"\\ud800"``)."""
    if all(type(v) is not str or _utf8(v) for v in values):
        return
    for i, value in enumerate(values if rows is None else rows):
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and not _utf8(item) for item in items):
            raise RequestError(422, f"rows[{i}]: feature {name!r}: a string holds a lone surrogate "
                                    "(an unpaired \\ud800-\\udfff escape), which is not valid Unicode")


def _number(value: int | float) -> str:
    """A number for a message: huge integers by their digit count, not their 400 digits."""
    if isinstance(value, int) and abs(value) >= 10**15:
        return f"a {len(str(abs(value)))}-digit integer"
    return f"the number {value:.6g}"


def _categorical_column(name: str, values: list[Any]) -> Column:
    _wrong_type(values, name, (str, int, float, bool), "a string, number, boolean or null")
    for i, value in enumerate(values):
        _check_category_number(value, i, name)
    return _category_values(name, values)


def _check_category_number(value: Any, row: int, name: str) -> None:
    """Numbers become categories through int64 (3.0 is category '3'): beyond its range they cannot."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if abs(value) >= 2**63 and (isinstance(value, int) or math.isfinite(value)):  # no float(): ints may have 4,300 digits
        raise RequestError(422, f"rows[{row}]: feature {name!r}: {_number(value)} is too large to be a category (send it as a string)")


def _category_values(name: str, values: list[Any], rows: Sequence[Any] | None = None) -> tuple[pa.DataType, list]:
    """Homogeneous values keep their type (the schema stringifies them as it does offline).

    ``rows``: the per-row values when ``values`` are a sequence's flattened items (for messages).
    """
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {bool}:
        return pa.bool_(), values
    if kinds <= {int}:
        return pa.int64(), values
    if kinds <= {int, float}:
        return pa.float64(), [None if v is None else float(v) for v in values]
    strings = values if kinds <= {str} else _mixed_strings(values)
    _check_strings(strings, name, rows)
    return pa.string(), strings


def _mixed_strings(values: list[Any]) -> list[Any]:
    """Strings mixed with numbers in one column: each number written as Arrow writes it (3.0 → '3')."""
    out: list[Any] = []
    for value in values:
        if isinstance(value, bool):
            out.append("true" if value else "false")
        elif isinstance(value, int):
            out.append(str(value))
        elif isinstance(value, float):
            if math.isnan(value):
                out.append(None)
            elif math.isfinite(value) and value == round(value):
                out.append(str(int(value)))
            else:
                out.append(pc.cast(pa.array([value]), pa.string())[0].as_py())
        else:
            out.append(value)
    return out


def _numeric_column(name: str, values: list[Any]) -> Column:
    floats: list[float | None] = []
    for i, value in enumerate(values):
        if value is None:
            floats.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(422, f"rows[{i}]: feature {name!r} must be a number or null, got {json_type(value)}")
        try:
            floats.append(float(value))
        except OverflowError:  # an integer beyond the float range (JSON numbers may have 4,300 digits)
            raise RequestError(422, f"rows[{i}]: feature {name!r}: {_number(value)} is beyond the largest float (1.8e308)") from None
    return pa.float64(), floats


def _sequence_column(seq: FittedSequence, values: list[Any]) -> Column:
    name = seq.name
    if seq.separator is not None:
        _wrong_type(values, name, (list, str), f"a list of items or a {seq.separator!r}-delimited string")
        if all(v is None or isinstance(v, str) for v in values):
            _check_strings(values, name)
            return pa.string(), values
        # Lists and delimited strings in one request: split the strings as the schema would (trimmed items).
        values = [[item.strip() for item in v.split(seq.separator)] if isinstance(v, str) else v for v in values]
    else:
        _wrong_type(values, name, (list,), "a list of items (strings or numbers) or null")
    if all(v is None or type(v) is list for v in values):
        # Fast path, Arrow's own conversion (histories are long: no Python loop over items); it
        # raises on any other item type, and the loop below then names the row at fault.
        for items_type in (pa.string(), pa.int64()):
            try:
                return pa.array(values, type=pa.list_(items_type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError):
                pass
    items: list[Any] = []
    for i, value in enumerate(values):
        for item in value or ():
            if item is not None and not isinstance(item, (str, int, float, bool)):
                raise RequestError(422, f"rows[{i}]: feature {name!r} items must be strings or numbers, got {json_type(item)}")
            _check_category_number(item, i, name)
            items.append(item)
    items_type, flat = _category_values(name, items, values)
    offsets, position = [0], 0
    for value in values:
        position += len(value or ())
        offsets.append(position)
    validity = pa.array([v is None for v in values])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, items_type), mask=validity)


__all__ = ["Column", "RequestError", "RowBlock", "json_type", "rows_to_table", "to_table", "validate_rows"]
