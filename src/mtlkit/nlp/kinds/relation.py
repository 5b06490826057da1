"""Relation classification between marked entity pairs: PURE's relation model (Zhong & Chen, NAACL 2021).

For every ordered pair (subject, object) of distinct entities of a sentence, the words are
re-written with **typed entity markers** around both arguments, encoded, and the relation is
classified from the concatenated states of the two **start markers** (PURE Eq. 2–3):

    h_r(s, o) = [h(⟨S:type_s⟩); h(⟨O:type_o⟩)],   P(r | s, o) = softmax(W_r h_r(s, o))

with ``no_relation`` as class 0. Two marker styles:

- ``markers: punct`` (default) — typed markers from punctuation already in every vocabulary
  (Zhou & Chen 2022, "typed entity marker (punct)"): ``@ * Method * BERT @ … # ^ Task ^ NER #``.
  Works with any encoder as is.
- ``markers: tokens`` — PURE's new tokens ``<S:Method> BERT </S:Method> … <O:Task> NER </O:Task>``.
  They must be added to the tokenizer and the encoder's embeddings resized before featurizing:
  :meth:`RelationTask.special_tokens` lists them (``entity_types`` must be given).

``context_window`` adds up to that many document words each side (PURE's cross-sentence context).

**Metrics** (PURE §4): ``relation_f1`` (Rel) counts a predicted relation correct if both argument
boundaries and the relation type match a gold one; ``relation_strict_f1`` (Rel+) also needs the
argument entity types. Gold relations are those of all ``examples`` given to :meth:`evaluate`,
so relations between entities the model never saw as a pair still count as misses.

**Pipeline** (same-text IE on SciERC): ``gold entities`` setting — featurize the reader's
sentences directly. ``end-to-end`` setting — train :class:`~mtlkit.nlp.kinds.span_ner.SpanNERTask`,
replace each sentence's entities by its predictions
(:meth:`~mtlkit.nlp.kinds.span_ner.SpanNERTask.predict_entities`, which keeps the gold relations),
featurize those with this kind and evaluate: Rel/Rel+ are then end-to-end. Whether the two tasks
share the encoder is the tasks' ``encoder: shared | own`` switch (PURE argues for ``own``).

Example:
    >>> words, s, o = mark_pair(["BERT", "improves", "NER"], (0, 0), (2, 2), "Method", "Task")
    >>> " ".join(words), words[s], words[o]
    ('@ * Method * BERT @ improves # ^ Task ^ NER #', '@', '#')
    >>> mark_pair(["a", "b"], (0, 1), (1, 1), "X", "Y", style="tokens")[0]   # nested spans
    ['<S:X>', 'a', '<O:Y>', 'b', '</O:Y>', '</S:X>']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import ConfigError, DataError
from mtlkit.nlp import span_metrics
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.json_inputs import InputError, json_type, text, words
from mtlkit.nlp.kinds._common import head_layers, masked_mean, model_inputs, require_fast, stack_outputs
from mtlkit.nlp.records import Entity, IESentence, Span

NO_RELATION = "no_relation"


def _marker_words(role: str, kind: str, style: str) -> tuple[list[str], list[str]]:
    if style == "tokens":
        return [f"<{role}:{kind}>"], [f"</{role}:{kind}>"]
    bound, inner = ("@", "*") if role == "S" else ("#", "^")
    return [bound, inner, kind, inner], [bound]


def mark_pair(words: Sequence[str], subject: Span, object: Span, subject_type: str, object_type: str,
              style: str = "punct") -> tuple[list[str], int, int]:
    """Words with markers around both (inclusive) spans, and the indices of the two start markers."""
    args = [("S", subject, subject_type), ("O", object, object_type)]
    out: list[str] = []
    starts: dict[str, int] = {}
    for k, word in enumerate(words):
        # Opening: the outer (longer) span first; closing: the inner one first — nesting stays well formed.
        for role, _, kind in sorted((a for a in args if a[1][0] == k), key=lambda a: -a[1][1]):
            starts[role] = len(out)
            out.extend(_marker_words(role, kind, style)[0])
        out.append(word)
        for role, _, kind in sorted((a for a in args if a[1][1] == k), key=lambda a: -a[1][0]):
            out.extend(_marker_words(role, kind, style)[1])
    return out, starts["S"], starts["O"]


class RelationHead(NLPHead):
    """Logits ``(B, C)`` from the concatenated subject and object start-marker states."""

    def __init__(self, hidden_size: int, num_labels: int, hidden: Sequence[int] = (), dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = head_layers(2 * hidden_size, hidden, dropout, num_labels)

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        rows = torch.arange(sequence.shape[0], device=sequence.device)
        pair = torch.cat([sequence[rows, inputs["subject_index"]], sequence[rows, inputs["object_index"]]], dim=-1)
        return self.layers(pair)


def entity_pairs(sentence: IESentence) -> list[tuple[int, int]]:
    """All ordered pairs of distinct entity indices: PURE classifies every one."""
    n = len(sentence.entities)
    return [(a, b) for a in range(n) for b in range(n) if a != b]


def check_spans(sentence: IESentence) -> None:
    n = len(sentence.tokens)
    spans = [e.span for e in sentence.entities] + [s for r in sentence.relations for s in (r.subject, r.object)]
    for start, end in spans:
        if not 0 <= start <= end < n:
            raise DataError(f"{sentence.source or sentence.doc_key or 'IE data'}: span [{start}, {end}] is outside "
                            f"the sentence's {n} words")


@NLP_KINDS.register("relation")
class RelationTask(NLPTask):
    kind: ClassVar[str] = "relation"
    default_metrics: ClassVar[list[str]] = ["relation_f1", "relation_precision", "relation_recall", "relation_strict_f1"]
    supported_metrics: ClassVar[list[str]] = default_metrics
    token_level: ClassVar[bool] = True

    labels: list[str] | None = None  # relation types, no_relation excluded (it is class 0); default: from the data
    entity_types: list[str] = Field(default_factory=list)  # for markers: tokens; default: from the data
    markers: Literal["punct", "tokens"] = "punct"
    context_window: int = Field(default=0, ge=0)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and (NO_RELATION in labels or len(set(labels)) != len(labels) or not labels):
            raise ValueError(f"labels: each relation type once, without {NO_RELATION!r} (it is class 0)")
        return labels

    def resolve(self, train_examples: Sequence[IESentence]) -> RelationTask:
        """The task with relation types (and, for marker tokens, entity types) from the training data."""
        update: dict[str, Any] = {}
        if not self.labels:
            update["labels"] = sorted({r.type for ex in train_examples for r in ex.relations})
            if not update["labels"]:
                raise DataError(f"task {self.name!r}: its training data holds no relation; set `labels`")
        if self.markers == "tokens" and not self.entity_types:
            update["entity_types"] = sorted({e.type for ex in train_examples for e in ex.entities})
        return self.model_copy(update=update) if update else self

    @property
    def classes(self) -> list[str]:
        if not self.labels:
            raise ConfigError(f"task {self.name!r}: labels are unknown; set them or call resolve(train_examples) first")
        return [NO_RELATION, *self.labels]

    def special_tokens(self) -> list[str]:
        """Marker tokens to add to the tokenizer (and the encoder's embeddings) for ``markers: tokens``."""
        if self.markers != "tokens":
            return []
        if not self.entity_types:
            raise ConfigError(f"task {self.name!r}: markers: tokens needs entity_types; set them or call resolve() first")
        return [m for t in self.entity_types for role in ("S", "O") for m in sum(_marker_words(role, t, "tokens"), [])]

    # -- data ----------------------------------------------------------------------------
    def featurize(self, examples: Sequence[IESentence], tokenizer: Any) -> EncodedTable:
        require_fast(tokenizer, self.name)
        missing = [t for t in self.special_tokens() if t not in tokenizer.get_vocab()]
        if missing:
            raise ConfigError(f"task {self.name!r}: the tokenizer lacks marker tokens {missing[:3]}…: add "
                              f"task.special_tokens() to it and resize the encoder's embeddings")
        index = {t: i for i, t in enumerate(self.classes)}
        texts, starts, rows = [], [], []
        for e, ex in enumerate(examples):
            check_spans(ex)
            gold = {(r.subject, r.object): r.type for r in ex.relations}
            unknown = set(gold.values()) - set(self.classes[1:])
            if unknown:
                raise DataError(f"{ex.source or ex.doc_key or 'IE data'}: relation type {sorted(unknown)[0]!r} is not "
                                f"one of task {self.name!r}'s labels {self.classes[1:]}")
            words, offset = ex.context(self.context_window)
            for a, b in entity_pairs(ex):
                sub, obj = ex.entities[a], ex.entities[b]
                sub_span = (sub.span[0] + offset, sub.span[1] + offset)
                obj_span = (obj.span[0] + offset, obj.span[1] + offset)
                marked, s_at, o_at = mark_pair(words, sub_span, obj_span, sub.type, obj.type, self.markers)
                texts.append(marked)
                starts.append((s_at, o_at))
                rows.append((e, a, b, index[gold.get((sub.span, obj.span), NO_RELATION)]))
        n = len(rows)
        if n == 0:  # e.g. an early entity model predicted < 2 entities per sentence: nothing to classify
            empty = torch.zeros(0, dtype=torch.long)
            return EncodedTable(inputs={"input_ids": torch.zeros(0, 1, dtype=torch.long),
                                        "attention_mask": torch.zeros(0, 1, dtype=torch.long),
                                        "subject_index": empty, "object_index": empty},
                                targets={self.name: empty}, masks={self.name: torch.zeros(0, dtype=torch.bool)},
                                extras={"example_index": empty, "subject_entity": empty, "object_entity": empty})
        enc = tokenizer(texts, is_split_into_words=True, truncation=True, max_length=self.max_length, padding="longest")
        marker_index = torch.zeros(n, 2, dtype=torch.long)
        kept = torch.zeros(n, dtype=torch.bool)
        for i, (s_at, o_at) in enumerate(starts):
            first: dict[int, int] = {}
            for t, w in enumerate(enc.word_ids(i)):
                if w is not None:
                    first.setdefault(w, t)
            if s_at in first and o_at in first:  # else truncation cut a marker off: the pair is scored as missed
                marker_index[i] = torch.tensor([first[s_at], first[o_at]])
                kept[i] = True
        table_rows = torch.tensor(rows, dtype=torch.long)
        inputs = model_inputs(enc)
        inputs["subject_index"], inputs["object_index"] = marker_index[:, 0], marker_index[:, 1]
        return EncodedTable(inputs=inputs, targets={self.name: table_rows[:, 3]}, masks={self.name: kept},
                            extras={"example_index": table_rows[:, 0], "subject_entity": table_rows[:, 1],
                                    "object_entity": table_rows[:, 2]})

    # -- model ---------------------------------------------------------------------------
    def build_head(self, hidden_size: int) -> NLPHead:
        return RelationHead(hidden_size, len(self.classes), self.head.hidden, self.head.dropout)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None,
                     mask: Tensor | None = None) -> Tensor:
        loss = F.cross_entropy(outputs.float(), target, reduction="none")
        return masked_mean(loss, torch.ones_like(loss, dtype=torch.bool), weight, mask)

    # -- evaluation ----------------------------------------------------------------------
    def predict_relations(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                          examples: Sequence[IESentence]) -> list[tuple[int, Span, str, Span, str, str]]:
        """``(example, subject span, subject type, object span, object type, relation)`` of non-null predictions."""
        if len(table) == 0:
            return []
        predicted = stack_outputs(outputs).argmax(-1).masked_fill(~table.masks[self.name], 0)
        columns = [table.extras[k].tolist() for k in ("example_index", "subject_entity", "object_entity")]
        out = []
        for label, e, a, b in zip(predicted.tolist(), *columns):
            if label:
                sub, obj = examples[e].entities[a], examples[e].entities[b]
                out.append((e, sub.span, sub.type, obj.span, obj.type, self.classes[label]))
        return out

    def evaluate(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                 examples: Sequence[IESentence]) -> dict[str, float]:
        strict = self.predict_relations(outputs, table, examples)
        gold_strict = [(e, r.subject, r.subject_type, r.object, r.object_type, r.type)
                       for e, ex in enumerate(examples) for r in ex.relations]
        loose = span_metrics.prf([(e, s, o, r) for e, s, _, o, _, r in strict],
                                 [(e, s, o, r) for e, s, _, o, _, r in gold_strict])
        values = {"relation_precision": loose.precision, "relation_recall": loose.recall, "relation_f1": loose.f1,
                  "relation_strict_f1": span_metrics.prf(strict, gold_strict).f1}
        return {k: v for k, v in values.items() if self.metrics is None or k in self.metrics}

    def example_from_json(self, value: Any) -> IESentence:
        """``{"tokens": [...], "entities": [{"start", "end", "type"}, ...]}``: the candidate arguments (inclusive word spans)."""
        if not isinstance(value, dict) or "entities" not in value:
            raise InputError('an input must be {"tokens": [word, ...], "entities": [{"start": i, "end": j, "type": t}, ...]}')
        tokens = words({"tokens": value.get("tokens")})
        entities = value["entities"]
        if not isinstance(entities, list):
            raise InputError(f'"entities" must be a list, got {json_type(entities)}')
        found = []
        for k, e in enumerate(entities):
            if not isinstance(e, dict) or set(e) != {"start", "end", "type"}:
                raise InputError(f'entities[{k}] must be {{"start": i, "end": j, "type": t}}')
            start, end = e["start"], e["end"]
            if any(isinstance(v, bool) or not isinstance(v, int) for v in (start, end)) or not 0 <= start <= end < len(tokens):
                raise InputError(f"entities[{k}]: start and end must be word indices with 0 <= start <= end < {len(tokens)}")
            found.append(Entity(start, end, text(e["type"], f"entities[{k}].type")))
        return IESentence(tokens=tokens, entities=tuple(found))

    def predict_records(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                        examples: Sequence[IESentence]) -> list[dict[str, Any]]:
        """``{"tokens", "relations": [...]}`` per sentence; its given entities are the candidate arguments."""
        found: dict[int, list[dict[str, Any]]] = {}
        for e, s, s_type, o, o_type, kind in self.predict_relations(outputs, table, examples):
            found.setdefault(e, []).append({"subject": list(s), "subject_type": s_type, "object": list(o),
                                            "object_type": o_type, "type": kind})
        return [{"tokens": list(ex.tokens), "relations": found.get(e, [])} for e, ex in enumerate(examples)]


__all__ = ["NO_RELATION", "RelationHead", "RelationTask", "entity_pairs", "mark_pair"]
