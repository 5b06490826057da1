"""GLUE-style tab-separated files: SST-2, RTE, MRPC (``msr_paraphrase_*.txt``) and STS-B (``sts-*.tsv``).

Fields are split on tabs with no quoting (GLUE texts contain quotes); a UTF-8 byte-order mark
is dropped (MRPC has one). A line with the wrong number of fields, or a score that is not a
number, is a :class:`~mtlkit.errors.DataError` naming ``file:line``.

- ``glue_tsv`` — a header line names the columns (``sentence<TAB>label``,
  ``index<TAB>sentence1<TAB>sentence2<TAB>label``). Options: ``text`` / ``pair`` / ``label`` /
  ``domain`` column names (``auto``: ``sentence``/``sentence1``/``question``/``text``,
  ``sentence2``/``hypothesis``, ``label`` if present — else unlabelled), and ``columns`` for
  headerless files (RTE's ``val.tsv``): the names of the fields, the first line being skipped
  only when it equals them, so one option serves ``[train.tsv, val.tsv]`` alike.
- ``mrpc`` — the original MSR paraphrase files: ``Quality`` (1 = paraphrase), ``#1 String``,
  ``#2 String``.
- ``sts`` — STS Benchmark's distribution files, no header: genre, file, years, id, score
  (0–5), sentence1, sentence2 [, source1, source2]; ``domain`` is the genre (``domain: genre``,
  default) or the source file (``domain: file``: MSRvid, headlines, …); ``domains: [...]`` keeps
  only those (train on some genres, test on an unseen one).

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "val.tsv")
    >>> _ = open(path, "w").write("7\\tA cat sat.\\tA cat is sitting.\\tentailment\\n")
    >>> rows = read_glue_tsv(path, columns=["index", "sentence1", "sentence2", "label"])
    >>> rows[0].text_pair, rows[0].label, rows[0].source.endswith("val.tsv:1")
    ('A cat is sitting.', 'entailment', True)
    >>> _ = open(path, "w").write("main-news\\theadlines\\t2016\\t0012\\t4.2\\tA b.\\tA c.\\n")
    >>> read_sts(path)[0].label, read_sts(path)[0].domain, read_sts(path, domain="file")[0].domain
    (4.2, 'main-news', 'headlines')
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from mtlkit.errors import DataError
from mtlkit.nlp.examples import TextExample
from mtlkit.nlp.readers import READERS

AUTO = "auto"
TEXT_NAMES = ("sentence", "sentence1", "question", "text", "premise")
PAIR_NAMES = ("sentence2", "hypothesis")


def iter_tsv(path: Path, columns: Sequence[str] | None = None) -> Iterator[tuple[list[str], int, list[str]]]:
    """``(header, line number, fields)`` per non-blank data line; checks the field count."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        header: list[str] | None = list(columns) if columns is not None else None
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if header is None:  # the first line names the columns
                header = [name.strip() for name in fields]
                continue
            if number == 1 and [x.strip() for x in fields] == header:  # a header equal to `columns`
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields, expected {len(header)} ({', '.join(header)})")
            yield header, number, fields


def _column(header: list[str], name: str | None, candidates: Sequence[str], path: Path, option: str) -> int | None:
    if name is None:
        return None
    if name == AUTO:
        return next((header.index(c) for c in candidates if c in header), None)
    if name not in header:
        raise DataError(f"{path}: no column {name!r} (option `{option}`); columns: {', '.join(header)}")
    return header.index(name)


@READERS.register("glue_tsv")
def read_glue_tsv(path: str | Path, text: str = AUTO, pair: str | None = AUTO, label: str | None = AUTO,
                  domain: str | None = None, columns: list[str] | None = None) -> list[TextExample]:
    path = Path(path)
    examples: list[TextExample] = []
    index: dict[str, int | None] | None = None
    for header, number, fields in iter_tsv(path, columns):
        if index is None:
            index = {"text": _column(header, text, TEXT_NAMES, path, "text"),
                     "pair": _column(header, pair, PAIR_NAMES, path, "pair"),
                     "label": _column(header, label, ("label",), path, "label"),
                     "domain": _column(header, domain, (), path, "domain")}
        text_at = index["text"]
        if text_at is None:
            raise DataError(f"{path}: no text column ({' / '.join(TEXT_NAMES)}); set the option `text`")
        pair, label, domain = (None if (at := index[key]) is None else fields[at] for key in ("pair", "label", "domain"))
        examples.append(TextExample(fields[text_at], pair, label, domain, f"{path}:{number}"))
    return examples


@READERS.register("mrpc")
def read_mrpc(path: str | Path) -> list[TextExample]:
    return read_glue_tsv(path, text="#1 String", pair="#2 String", label="Quality")


# The STS benchmark release spells one genre two ways: "main-forum" in sts-train.tsv and
# "main-forums" in sts-dev/test.tsv. One name, or a genre classifier meets an unseen label.
GENRE_ALIASES = {"main-forum": "main-forums"}


@READERS.register("sts")
def read_sts(path: str | Path, domain: Literal["genre", "file"] = "genre", domains: list[str] | None = None) -> list[TextExample]:
    path = Path(path)
    examples = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 7:
                raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields, expected at least 7 "
                                "(genre, file, years, id, score, sentence1, sentence2)")
            try:
                score = float(fields[4])
            except ValueError:
                raise DataError(f"{path}:{number}: score {fields[4]!r} is not a number") from None
            label = GENRE_ALIASES.get(fields[0], fields[0]) if domain == "genre" else fields[1]
            examples.append(TextExample(fields[5], fields[6], score, label, f"{path}:{number}"))
    if domains is not None:  # e.g. train on two genres, test on the third (an unseen domain)
        present = {e.domain for e in examples if e.domain is not None}  # every row here has a genre/file
        missing = [d for d in domains if d not in present]
        if missing:
            raise DataError(f"{path}: no rows of {domain} {missing[0]!r} (the file has: {', '.join(sorted(present))})")
        examples = [e for e in examples if e.domain in domains]
    return examples


__all__ = ["iter_tsv", "read_glue_tsv", "read_mrpc", "read_sts"]
