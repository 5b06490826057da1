"""Download a file once, verify its checksum, keep it in a cache directory.

Checksums are of the *uncompressed* content for ``.gz`` files, so a re-compressed mirror with
the same data still verifies. Any URL scheme urllib knows works, ``file://`` included (which is
how the tests exercise this code without a network).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
from pathlib import Path

from mtlkit.errors import DataError

CACHE_ENV = "MTLKIT_CACHE"


def cache_dir(name: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "mtlkit"))
    return root / name


def sha256_of(path: Path, uncompressed: bool = False) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if uncompressed else open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, destination: Path, sha256: str, uncompressed: bool = True) -> Path:
    """Return ``destination``, downloading ``url`` there first if it is missing.

    The download goes to a temporary name and is renamed only after the checksum matches, so
    an interrupted or corrupted download never leaves a file that looks valid.
    """
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {error}") from None
    actual = sha256_of(partial, uncompressed=uncompressed)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}")
    os.replace(partial, destination)
    return destination
