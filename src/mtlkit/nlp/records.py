"""Plain records for the span-level NLP kinds: tagged sentences, QA examples, IE sentences.

The readers (:mod:`mtlkit.nlp.readers`) produce them and the kinds (tagging, span QA, span
NER, relation) featurize them. Every record carries ``source`` ("file:line" or a JSON path)
so that a bad value is reported where it came from.

Word spans are **inclusive** word indices within the sentence (SciERC's convention).

Example:
    >>> s = IESentence(tokens=("BERT", "improves", "NER"),
    ...                entities=(Entity(0, 0, "Method"), Entity(2, 2, "Task")),
    ...                relations=(Relation((0, 0), (2, 2), "USED-FOR"),))
    >>> s.span_text((2, 2)), s.with_entities(()).relations == s.relations
    ('NER', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

Span = tuple[int, int]


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence of word-level tags (BIO), e.g. a CoNLL block."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    source: str = ""


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset in the context


@dataclass(frozen=True)
class QAExample:
    """One SQuAD question on one context; ``paragraph`` groups questions of one context."""

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    paragraph: str = ""
    source: str = ""


@dataclass(frozen=True)
class Entity:
    start: int  # inclusive word indices within the sentence
    end: int
    type: str

    @property
    def span(self) -> Span:
        return (self.start, self.end)


@dataclass(frozen=True)
class Relation:
    """A directed relation; the argument types are kept so that Rel+ can be scored on predicted entities."""

    subject: Span
    object: Span
    type: str
    subject_type: str = ""
    object_type: str = ""


@dataclass(frozen=True)
class IESentence:
    """A sentence with entity mentions and directed relations between them (SciERC, PURE).

    ``left``/``right`` hold the neighbouring words of the document, which the kinds may add as
    context (PURE's cross-sentence context window).
    """

    tokens: tuple[str, ...]
    entities: tuple[Entity, ...] = ()
    relations: tuple[Relation, ...] = ()
    doc_key: str = ""
    left: tuple[str, ...] = ()
    right: tuple[str, ...] = ()
    source: str = ""

    def span_text(self, span: Span) -> str:
        return " ".join(self.tokens[span[0]: span[1] + 1])

    def context(self, window: int) -> tuple[list[str], int]:
        """Up to ``window`` document words each side around the sentence, and the sentence's offset in them."""
        left = list(self.left[max(0, len(self.left) - window):]) if window else []
        right = list(self.right[:window])
        return left + list(self.tokens) + right, len(left)

    def with_entities(self, entities: Sequence[Entity]) -> IESentence:
        """The same sentence with other (e.g. predicted) entities; gold relations are kept for scoring."""
        return replace(self, entities=tuple(entities))


__all__ = ["Answer", "Entity", "IESentence", "QAExample", "Relation", "Span", "TaggedSentence"]
