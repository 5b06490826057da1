"""Span-level metrics: entity P/R/F1 (seqeval / conlleval), SQuAD EM/F1, relation P/R/F1.

Importing this module registers the metric names in :data:`mtlkit.metrics.METRICS`, so that
model selection knows their direction. All values are fractions in [0, 1] (the SQuAD script
prints them ×100).

- **Entities from BIO tags** follow seqeval's default (conlleval) mode: a chunk starts at
  ``B-x``, and also at an ``I-x`` that follows ``O`` or a tag of another type (a malformed
  start is still an entity); it continues while ``I-x`` of the same type follows.
- **Micro P/R/F1** over sets of ``(sentence, type, start, end)`` (Tjong Kim Sang & De Meulder
  2003; seqeval's ``f1_score``): P = |pred ∩ gold| / |pred|, R = |pred ∩ gold| / |gold|,
  F1 = 2PR / (P + R), 0 where undefined.
- **SQuAD EM/F1** (Rajpurkar et al. 2016, official v1.1 script): answers normalised by
  lower-casing, removing punctuation and the articles a/an/the, and collapsing whitespace; F1
  on the bag of normalised tokens; both maximised over the gold answers. A question with no gold
  answer (SQuAD 2.0) scores 1 iff the prediction is the null answer "" (the v2.0 script's rule).

Example:
    >>> bio_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"])
    [('PER', 0, 1), ('LOC', 3, 3), ('LOC', 4, 4), ('ORG', 5, 5)]
    >>> entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    PRF(precision=0.0, recall=0.0, f1=0.0)
    >>> normalize_answer("The  Eiffel-Tower!"), squad_exact_match("an Eiffel tower.", ["The Eiffel Tower"])
    ('eiffeltower', 1.0)
    >>> round(squad_f1("the tower in Paris", ["Eiffel Tower"]), 3)   # 1 common token of 3 and 2
    0.4
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

from mtlkit.metrics import METRICS, Metric


class PRF(NamedTuple):
    precision: float
    recall: float
    f1: float


def prf(predicted: Iterable[Hashable], gold: Iterable[Hashable]) -> PRF:
    """Micro precision / recall / F1 of two sets of items (duplicates count once)."""
    pred, true = set(predicted), set(gold)
    hit = len(pred & true)
    p = hit / len(pred) if pred else 0.0
    r = hit / len(true) if true else 0.0
    return PRF(p, r, 2 * p * r / (p + r) if p + r else 0.0)


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O" or not tag:
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` chunks (inclusive) of one BIO tag sequence, conlleval-style."""
    chunks: list[tuple[str, int, int]] = []
    kind, start = "", -1
    for i, tag in enumerate(tags):
        prefix, tag_kind = _split_tag(tag)
        continues = prefix == "I" and start >= 0 and tag_kind == kind
        if start >= 0 and not continues:
            chunks.append((kind, start, i - 1))
            start = -1
        if prefix in ("B", "I") and not continues:  # I- after O / another type opens a chunk too
            kind, start = tag_kind, i
    if start >= 0:
        chunks.append((kind, start, len(tags) - 1))
    return chunks


def bio_tag_set(tags: Iterable[str]) -> list[str]:
    """``O`` then ``B-type``, ``I-type`` per entity type in sorted order: a tagging task's labels."""
    kinds = sorted({_split_tag(t)[1] for t in tags} - {""})
    return ["O", *(f"{p}-{k}" for k in kinds for p in "BI")]


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> PRF:
    """Entity-level micro P/R/F1 of BIO tag sequences (seqeval's default mode)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sequences but {len(predicted)} predicted")
    true = {(n, *c) for n, tags in enumerate(gold) for c in bio_entities(tags)}
    pred = {(n, *c) for n, tags in enumerate(predicted) for c in bio_entities(tags)}
    return prf(pred, true)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower, strip punctuation and articles, fix whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, answers: Sequence[str]) -> float:
    norm = normalize_answer(prediction)
    if not answers:  # SQuAD 2.0: unanswerable, right iff the prediction is null
        return float(norm == "")
    return float(any(norm == normalize_answer(a) for a in answers))


def _token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def squad_f1(prediction: str, answers: Sequence[str]) -> float:
    if not answers:  # SQuAD 2.0: unanswerable, right iff the prediction is null
        return float(normalize_answer(prediction) == "")
    return max((_token_f1(prediction, a) for a in answers), default=0.0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _squad_em_metric(predictions, labels, groups=None) -> float:
    return _mean([squad_exact_match(p, a) for p, a in zip(predictions, labels)])


def _squad_f1_metric(predictions, labels, groups=None) -> float:
    return _mean([squad_f1(p, a) for p, a in zip(predictions, labels)])


def _entity_metric(field: str):
    return lambda predictions, labels, groups=None: getattr(entity_scores(labels, predictions), field)


def _set_metric(field: str):
    return lambda predictions, labels, groups=None: getattr(prf(predictions, labels), field)


def _accuracy(predictions, labels, groups=None) -> float:
    return _mean([float(p == y) for p, y in zip(predictions, labels)])


def token_accuracy(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    """The share of words whose tag is right (POS tagging's metric; a word without a prediction is wrong)."""
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, list(ps) + [None] * (len(gs) - len(ps)))]
    return _mean([float(g == p) for g, p in pairs])


# Each metric is callable as fn(predictions, labels): tag sequences for entity_*, answer strings
# vs lists of gold strings for squad_*, sets of tuples for relation_* / span-level scores.
_SPAN_METRICS = (
    *(Metric(f"entity_{f}", _entity_metric(f), True, ("tagging", "span_ner")) for f in ("precision", "recall", "f1")),
    *(Metric(f"relation_{f}", _set_metric(f), True, ("relation",)) for f in ("precision", "recall", "f1")),
    # Rel+ (strict): the entity types of both arguments must be right too (PURE Table 2).
    Metric("relation_strict_f1", _set_metric("f1"), True, ("relation",)),
    Metric("squad_em", _squad_em_metric, True, ("span_qa",)),
    Metric("squad_f1", _squad_f1_metric, True, ("span_qa",)),
    Metric("answer_window_accuracy", _accuracy, True, ("span_qa",)),
    Metric("token_accuracy", lambda predictions, labels, groups=None: token_accuracy(labels, predictions), True, ("tagging",)),
)
for _metric in _SPAN_METRICS:
    if _metric.name not in METRICS:  # idempotent if the module is executed twice (doctest collection)
        METRICS.register(_metric.name)(_metric)


__all__ = [
    "PRF",
    "bio_entities",
    "bio_tag_set",
    "entity_scores",
    "normalize_answer",
    "prf",
    "squad_exact_match",
    "squad_f1",
]
