"""The one YAML reader behind every config load: strict where PyYAML is lenient.

``yaml.safe_load`` builds only plain data, but it takes the last of two equal keys (a typo'd
copy silently wins), recurses once per nesting level (20,000 ``[`` end in a RecursionError)
and expands aliases without limit. :func:`load_yaml` refuses all three with a
:class:`~mtlkit.errors.ConfigError` naming the file, the key and the line; :func:`read_yaml_file`
also refuses files that are not UTF-8 text (UTF-16, stray bytes) the same way.

Example:
    >>> load_yaml("seed: 1\\ntrain: {lr: 0.1}\\n", "run.yaml")
    {'seed': 1, 'train': {'lr': 0.1}}
    >>> load_yaml("seed: 1\\nmodel: {}\\nseed: 2\\n", "run.yaml")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: run.yaml: key 'seed' is given twice (lines 1 and 3)
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

from mtlkit.errors import ConfigError

MAX_DEPTH = 64  # a run config nests a handful of levels
MAX_NODES = 1_000_000  # values once aliases are expanded: nine aliases of nine aliases … is a "billion laughs"


class _Refused(Exception):
    """Raised inside the loader; turned into a ConfigError naming the source by :func:`load_yaml`."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, deep nesting and alias bombs."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return self.construct_document(node)

    def compose_node(self, parent: Any, index: Any) -> Any:  # recursive in PyYAML: bound it
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep at line {self.peek_event().start_mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overrides: the point of merging
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise _Refused(f"key {key!r} is given twice (lines {lines[key]} and {line})")
                lines[key] = line
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values ``root`` holds once every alias is expanded (aliases share nodes: memoised)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Refused(f"an alias refers to the value that contains it (line {node.start_mark.line + 1})")
        active.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1 + sum(size(child) for child in children)
        active.discard(key)
        if total > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} values once its aliases (*name) are expanded (line {node.start_mark.line + 1})")
        sizes[key] = total
        return total

    size(root)


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text``; any problem is one ConfigError line naming ``source`` (and the line)."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as error:
        raise ConfigError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: malformed YAML{where}: {getattr(error, 'problem', None) or error}") from None
    finally:
        loader.dispose()


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); UTF-16/32 and invalid bytes are refused by position."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise ConfigError(f"{source}: the file is {name} encoded; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{source}: not UTF-8 text: byte {data[error.start]:#04x} at line {line} "
                          f"(offset {error.start}); save the file as UTF-8") from None


def read_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file (see :func:`load_yaml`); an unreadable file is a ConfigError too."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror or error}") from None
    return load_yaml(decode_text(data, str(path)), str(path))


__all__ = ["MAX_NODES", "MAX_DEPTH", "decode_text", "load_yaml", "read_yaml_file"]
