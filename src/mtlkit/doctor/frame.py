"""Columnar access to the splits for the doctor: cached float and string views, and row hashes.

Every accessor works on whole columns (pyarrow compute / numpy); nothing loops over rows.

Example:
    >>> import pyarrow as pa
    >>> splits = SplitTables({"train": pa.table({"a": [1, 1, 2], "b": ["x", "x", None]})})
    >>> splits.floats("train", "a").tolist(), splits.floats("train", "b") is None
    ([1.0, 1.0, 2.0], True)
    >>> h = row_hashes({"train": splits.tables["train"]}, ["a", "b"])["train"]
    >>> bool(h[0] == h[1]), bool(h[0] == h[2])
    (True, False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlkit.data.encoding import as_strings  # same category semantics as encoding (3.0 == 3)

_PRIME = np.uint64(0x100000001B3)


class SplitTables:
    """The splits that exist (train first), their sources, and cached column views."""

    def __init__(self, tables: Mapping[str, pa.Table | None], names: Mapping[str, str] | None = None) -> None:
        self.tables = {k: v for k, v in tables.items() if v is not None}
        self.names = {k: (names or {}).get(k, k) for k in self.tables}
        self._floats: dict[tuple[str, str], np.ndarray | None] = {}
        self._strings: dict[tuple[str, str], pa.Array] = {}

    @property
    def splits(self) -> list[str]:
        return list(self.tables)

    def source(self, split: str) -> str:
        return self.names[split]

    def rows(self, split: str) -> int:
        return self.tables[split].num_rows

    def column_type(self, split: str, column: str) -> pa.DataType:
        return self.tables[split].schema.field(column).type

    def floats(self, split: str, column: str) -> np.ndarray | None:
        """float64 values, NaN for null; ``None`` when the column is not numeric."""
        key = (split, column)
        if key not in self._floats:
            array = self.tables[split].column(column).combine_chunks()
            if pa.types.is_dictionary(array.type):
                array = array.dictionary_decode()
            if pa.types.is_boolean(array.type):
                array = array.cast(pa.int8())
            if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_null(array.type):
                self._floats[key] = np.asarray(pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
            else:
                self._floats[key] = None  # strings are not silently parsed: encoding rejects them too
        return self._floats[key]

    def strings(self, split: str, column: str) -> pa.Array:
        key = (split, column)
        if key not in self._strings:
            self._strings[key] = as_strings(self.tables[split].column(column))
        return self._strings[key]


def first_row(mask: np.ndarray) -> int:
    """1-based data row of the first True (the row numbering of Task.label_problem)."""
    return int(np.argmax(mask)) + 1


# -- row hashing (exact duplicates) ---------------------------------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads small integer codes over all 64 bits."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _codes(arrays: Sequence[pa.Array]) -> list[np.ndarray] | None:
    """Equal values get equal uint64 codes across ``arrays``; ``None`` for types we cannot compare."""
    kinds = {("num" if pa.types.is_integer(a.type) or pa.types.is_floating(a.type) or pa.types.is_boolean(a.type)
              else "list" if pa.types.is_list(a.type) or pa.types.is_large_list(a.type) else "other") for a in arrays}
    lengths = [len(a) for a in arrays]
    if kinds == {"num"}:
        # Raw float64 bits: 1 and 1.0 match across splits whose CSV types differ; -0.0 and NaN normalised.
        values = np.concatenate([np.asarray(pc.cast(a.cast(pa.int8()) if pa.types.is_boolean(a.type) else a, pa.float64())
                                            .to_numpy(zero_copy_only=False), dtype=np.float64) for a in arrays])
        values = np.where(values == 0, 0.0, values)
        codes = values.view(np.uint64).copy()
        codes[np.isnan(values)] = np.uint64(0x7FF8000000000001)
    elif kinds == {"list"}:
        return _list_codes(arrays)
    elif "list" in kinds:
        return None
    else:
        try:
            joined = pa.concat_arrays([as_strings(pa.chunked_array([a])) for a in arrays])
            encoded = pc.dictionary_encode(joined, null_encoding="encode")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.uint64)
    return np.split(codes, np.cumsum(lengths)[:-1])


def _list_codes(arrays: Sequence[pa.Array]) -> list[np.ndarray] | None:
    """A list cell's code mixes its items' codes with their positions (sums mod 2**64 per row)."""
    items = [pc.list_flatten(a) for a in arrays]
    item_codes = _codes(items)
    if item_codes is None:
        return None
    out = []
    for array, codes in zip(arrays, item_codes):
        lengths = np.asarray(pc.fill_null(pc.list_value_length(array), -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        counts = np.maximum(lengths, 0)
        ends = np.cumsum(counts)
        starts = ends - counts
        position = np.arange(len(codes)) - np.repeat(starts, counts)
        with np.errstate(over="ignore"):
            mixed = _mix(_mix(codes) + position.astype(np.uint64))
            total = np.concatenate([[np.uint64(0)], np.cumsum(mixed, dtype=np.uint64)])
            row = total[ends] - total[starts]  # modular difference: exact under wrap-around
            out.append(row + _mix(lengths.astype(np.uint64)))
    return out


def row_hashes(tables: Mapping[str, pa.Table], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """A 64-bit hash per row over ``columns``, consistent across the given tables.

    Values are coded per column jointly over all tables, then folded row-wise; two rows share a
    hash when they are equal (and, with probability ~n²/2⁶⁵, by collision). Columns of a type
    that cannot be coded (structs, maps) are skipped.
    """
    names = list(tables)
    hashes = {k: np.full(tables[k].num_rows, np.uint64(0xCBF29CE484222325), dtype=np.uint64) for k in names}
    for column in columns:
        arrays = []
        for k in names:
            array = tables[k].column(column).combine_chunks()
            arrays.append(array.dictionary_decode() if pa.types.is_dictionary(array.type) else array)
        codes = _codes(arrays)
        if codes is None:
            continue
        with np.errstate(over="ignore"):
            for k, c in zip(names, codes):
                hashes[k] = (hashes[k] ^ _mix(c)) * _PRIME
    return hashes


def skipped_hash_columns(table: pa.Table) -> list[str]:
    """Columns :func:`row_hashes` cannot compare (nested types other than lists)."""
    def comparable(t: pa.DataType) -> bool:
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return comparable(t.value_type)
        return not (pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t))
    return [f.name for f in table.schema if not comparable(f.type)]
