"""How much Parquet damage does ``mtlkit.data.readers.read_table`` catch? Random overwrites, counted.

Each trial writes a click log as Parquet (with or without page checksums; snappy or no
compression), overwrites ``--bytes`` random bytes at a random offset (the audit's experiment:
2,000 bytes mid-file), reads it back with mtlkit, and sorts the outcome:

- caught: a DataError naming the file (checksum, statistics, undecodable page or footer);
- harmless: the table read equals the original (the bytes hit padding or unused metadata);
- silent: values changed and nobody noticed — what the reader cannot detect.

Each damaged file is also read with plain ``pyarrow.parquet.read_table`` (what mtlkit did before
it verified checksums and statistics), side by side.

Usage: python benchmarks/parquet_damage.py [--trials 200] [--bytes 2000] [--rows 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mtlkit.data.readers import read_table  # noqa: E402
from mtlkit.errors import DataError  # noqa: E402

from conftest import click_table  # noqa: E402


def damage(original, path: Path, options: dict, size: int, rng: np.random.Generator) -> None:
    pq.write_table(original, path, **options)
    data = bytearray(path.read_bytes())
    size = min(size, len(data))
    start = int(rng.integers(0, len(data) - size + 1))
    data[start : start + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def outcome(read, original, path: Path) -> str:
    try:
        table = read(path)
    except (DataError, OSError, ValueError):  # pyarrow alone raises OSError / ArrowInvalid (a ValueError)
        return "caught"
    return "harmless" if table.equals(original) else "silent"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--bytes", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    original = click_table(args.rows, 0)
    settings = {
        "snappy, no checksums (pyarrow's default)": {},
        "uncompressed, no checksums": {"compression": "none"},
        "snappy, page checksums (mtlkit's writers)": {"write_page_checksum": True},
        "uncompressed, page checksums": {"compression": "none", "write_page_checksum": True},
    }
    print(f"{args.trials} trials per setting, {args.bytes} random bytes at a random offset, {args.rows} rows\n")
    readers = {"mtlkit": read_table, "pyarrow": pq.read_table}  # pyarrow: read_table as mtlkit called it before
    print(f"{'file':45s} {'reader':8s} {'caught':>7s} {'harmless':>9s} {'silent':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.parquet"
        for name, options in settings.items():
            rng = np.random.default_rng(0)
            counts = {reader: {"caught": 0, "harmless": 0, "silent": 0} for reader in readers}
            for _ in range(args.trials):
                damage(original, path, options, args.bytes, rng)
                for reader, read in readers.items():
                    counts[reader][outcome(read, original, path)] += 1
            for reader, c in counts.items():
                print(f"{name:45s} {reader:8s} {c['caught']:7d} {c['harmless']:9d} {c['silent']:7d}")


if __name__ == "__main__":
    main()
