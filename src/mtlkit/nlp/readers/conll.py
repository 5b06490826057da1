"""CoNLL column files (WNUT-17, CoNLL-2003 style): one ``token<TAB>tag`` per line, blank lines between sentences.

Columns are split on tabs when the line has one, else on whitespace; the token is column
``token_column`` and the tag column ``tag_column`` (the last one by default, as in CoNLL-2003's
four columns). ``-DOCSTART-`` lines are skipped. Each sentence records ``file:line`` of its first
token, so that a tag the task does not know is reported where it is.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "mini.conll")
    >>> _ = open(path, "w").write("Empire\\tB-location\\nState\\tI-location\\n\\t\\nhi\\tO\\n")
    >>> sentences = read_conll(path)
    >>> [s.tokens for s in sentences], sentences[1].source.endswith("mini.conll:4")
    ([('Empire', 'State'), ('hi',)], True)
    >>> tag_set(sentences)
    ['O', 'B-location', 'I-location']
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mtlkit.errors import DataError
from mtlkit.nlp.records import TaggedSentence
from mtlkit.nlp.span_metrics import bio_tag_set


def read_conll(path: str | Path, token_column: int = 0, tag_column: int = -1) -> list[TaggedSentence]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def flush() -> None:
        if tokens:
            sentences.append(TaggedSentence(tuple(tokens), tuple(tags), f"{path}:{first}"))
            tokens.clear()
            tags.clear()

    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            columns = line.split("\t") if "\t" in line else line.split()
            if columns[0].startswith("-DOCSTART-"):
                continue
            try:
                token, tag = columns[token_column], columns[tag_column]
            except IndexError:
                raise DataError(f"{path}:{number}: expected token and tag columns, got {line!r}") from None
            if len(columns) < 2 or not token or not tag.strip():
                raise DataError(f"{path}:{number}: expected token and tag columns, got {line!r}")
            if not tokens:
                first = number
            tokens.append(token)
            tags.append(tag.strip())
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


def tag_set(sentences: Iterable[TaggedSentence]) -> list[str]:
    """``O`` then, per entity type in sorted order, ``B-type`` and ``I-type``: a task's ``labels``."""
    return bio_tag_set(t for s in sentences for t in s.tags)


__all__ = ["read_conll", "tag_set"]
