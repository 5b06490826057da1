"""The records readers return and sequence-level task kinds consume.

A reader turns one file into a list of examples; a task kind's ``featurize`` turns examples
into tensors. Sequence-level kinds share :class:`TextExample` (one text, an optional second
text of a pair, a label and an optional domain such as STS-B's genre); ranking has its own.
:func:`texts_of` reads the text out of any reader's record, for the kinds that take raw text from
another task's data (masked LM, replaced-token detection, token frequency, ``from_tasks``).

Example:
    >>> TextExample("A man is playing a flute.", "A man plays a flute.", 3.8, domain="main-captions").label
    3.8
    >>> RankingExample("capital of France?", ("Paris is the capital.", "Rome is in Italy."), 0).candidates[0]
    'Paris is the capital.'
    >>> texts_of(RankingExample("capital of France?", ("Paris.",)))
    ('capital of France?', None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlkit.nlp.records import IESentence, QAExample, TaggedSentence


@dataclass(frozen=True)
class TextExample:
    """One text (or text pair) with its label; ``label`` is None for unlabelled rows."""

    text: str
    text_pair: str | None = None
    label: Any = None
    domain: str | None = None  # e.g. STS-B genre, or the source task of a derived task
    source: str = ""  # "file:line", for error messages


@dataclass(frozen=True)
class RankingExample:
    """A query with its candidates; ``label`` is the index of the relevant candidate."""

    query: str
    candidates: tuple[str, ...]
    label: int | None = None
    source: str = ""


__all__ = ["RankingExample", "TextExample"]


def texts_of(example: Any) -> tuple[str, str | None]:
    """``(text, second text or None)`` of any reader's record: a pair stays a pair, words are joined
    by spaces, a QA example gives its context and a ranking example its query.

    Raises ``TypeError`` for a record that holds no text (the caller names the task).
    """
    if isinstance(example, TextExample):
        return example.text, example.text_pair
    if isinstance(example, (TaggedSentence, IESentence)):
        return " ".join(example.tokens), None
    if isinstance(example, QAExample):
        return example.context, None
    if isinstance(example, RankingExample):
        return example.query, None
    raise TypeError(f"{type(example).__name__} holds no text")
