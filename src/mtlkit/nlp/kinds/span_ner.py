"""Span-based NER: PURE's entity model (Zhong & Chen, NAACL 2021, §3.2, Eq. 1).

Every span of at most ``max_span_width`` words is a candidate; its representation is the states
of its first and last sub-tokens with a learned width embedding,

    h_e(s_i) = [x_START(i); x_END(i); φ(s_i)],   P(e | s_i) = softmax(W_e FFNN(h_e(s_i)))

classified into the entity types or ``none`` (class 0). Spans are independent: nested entities
are allowed, as in SciERC. ``context_window`` adds document words each side (PURE uses
cross-sentence context). Entity P/R/F1 are micro over exact ``(sentence, start, end, type)``.

Featurized table: ``inputs`` add ``span_starts``/``span_ends`` ``(N, S)`` token positions,
``span_widths`` ``(N, S)`` (words − 1) and ``span_mask``; ``targets[name]`` ``(N, S)`` class ids
(-100 on padding spans); ``extras["span_words"]`` ``(N, S, 2)`` inclusive word spans.
:meth:`SpanNERTask.predict_entities` feeds the relation kind in the end-to-end pipeline (see
:mod:`mtlkit.nlp.kinds.relation`).

Example:
    >>> enumerate_spans(3, max_width=2)
    [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import ConfigError, DataError
from mtlkit.nlp import span_metrics
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.json_inputs import token_counts, too_long, words
from mtlkit.nlp.kinds._common import IGNORE, head_layers, masked_mean, model_inputs, require_fast, stack_outputs, token_cross_entropy
from mtlkit.nlp.kinds.relation import check_spans
from mtlkit.nlp.records import Entity, IESentence

NONE = "none"


def enumerate_spans(n_words: int, max_width: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n_words) for j in range(i, min(n_words, i + max_width))]


class SpanNERHead(NLPHead):
    """Logits ``(B, S, C)`` per candidate span from [start state; end state; width embedding]."""

    def __init__(self, hidden_size: int, num_labels: int, max_width: int, width_dim: int,
                 hidden: Sequence[int] = (), dropout: float = 0.1) -> None:
        super().__init__()
        self.width = nn.Embedding(max_width, width_dim)
        self.layers = head_layers(2 * hidden_size + width_dim, hidden, dropout, num_labels)

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        def states(index: Tensor) -> Tensor:  # (B, S) positions → (B, S, H)
            return torch.gather(sequence, 1, index.unsqueeze(-1).expand(-1, -1, sequence.shape[-1]))

        spans = torch.cat([states(inputs["span_starts"]), states(inputs["span_ends"]),
                           self.width(inputs["span_widths"]).to(sequence.dtype)], dim=-1)
        return self.layers(spans)


@NLP_KINDS.register("span_ner")
class SpanNERTask(NLPTask):
    kind: ClassVar[str] = "span_ner"
    default_metrics: ClassVar[list[str]] = ["entity_f1", "entity_precision", "entity_recall"]
    supported_metrics: ClassVar[list[str]] = default_metrics
    token_level: ClassVar[bool] = True

    labels: list[str] | None = None  # entity types, "none" excluded (it is class 0); default: from the data
    max_span_width: int = Field(default=8, ge=1)  # words (PURE: 8 on SciERC)
    width_dim: int = Field(default=150, ge=1)  # PURE's width embedding size
    context_window: int = Field(default=0, ge=0)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and (NONE in labels or len(set(labels)) != len(labels) or not labels):
            raise ValueError(f"labels: each entity type once, without {NONE!r} (it is class 0)")
        return labels

    def resolve(self, train_examples: Sequence[IESentence]) -> SpanNERTask:
        """The task with ``labels`` (entity types) taken from the training data when not given."""
        if self.labels:
            return self
        labels = sorted({e.type for ex in train_examples for e in ex.entities})
        if not labels:
            raise DataError(f"task {self.name!r}: its training data holds no entity; set `labels`")
        return self.model_copy(update={"labels": labels})

    @property
    def classes(self) -> list[str]:
        if not self.labels:
            raise ConfigError(f"task {self.name!r}: labels are unknown; set them or call resolve(train_examples) first")
        return [NONE, *self.labels]

    # -- data ----------------------------------------------------------------------------
    def featurize(self, examples: Sequence[IESentence], tokenizer: Any) -> EncodedTable:
        require_fast(tokenizer, self.name)
        if not examples:
            raise DataError(f"task {self.name!r}: no sentences to featurize")
        index = {t: i for i, t in enumerate(self.classes)}
        contexts = [ex.context(self.context_window) for ex in examples]
        enc = tokenizer([words for words, _ in contexts], is_split_into_words=True, truncation=True,
                        max_length=self.max_length, padding="longest")
        per_row = []
        for i, (ex, (_, offset)) in enumerate(zip(examples, contexts)):
            check_spans(ex)
            first: dict[int, int] = {}
            last: dict[int, int] = {}
            for t, w in enumerate(enc.word_ids(i)):
                if w is not None:
                    first.setdefault(w, t)
                    last[w] = t
            gold = {}
            for entity in ex.entities:
                if entity.type not in index or entity.type == NONE:
                    raise DataError(f"{ex.source or ex.doc_key or 'IE data'}: entity type {entity.type!r} is not one of "
                                    f"task {self.name!r}'s labels {self.classes[1:]}")
                gold[entity.span] = index[entity.type]
            # A span needs its first and last word to have survived tokenization and truncation.
            spans = [(s, e) for s, e in enumerate_spans(len(ex.tokens), self.max_span_width)
                     if s + offset in first and e + offset in last]
            per_row.append([(s, e, first[s + offset], last[e + offset], gold.get((s, e), 0)) for s, e in spans])
        n, width = len(examples), max([len(r) for r in per_row] + [1])
        columns = torch.zeros(n, width, 5, dtype=torch.long)
        valid = torch.zeros(n, width, dtype=torch.bool)
        for i, row in enumerate(per_row):
            if row:
                columns[i, : len(row)] = torch.tensor(row, dtype=torch.long)
                valid[i, : len(row)] = True
        inputs = model_inputs(enc)
        inputs.update(span_starts=columns[..., 2], span_ends=columns[..., 3],
                      span_widths=columns[..., 1] - columns[..., 0], span_mask=valid)
        return EncodedTable(
            inputs=inputs, targets={self.name: columns[..., 4].masked_fill(~valid, IGNORE)},
            masks={self.name: valid.any(dim=1)},
            extras={"span_words": columns[..., :2], "example_index": torch.arange(n)},
        )

    # -- model ---------------------------------------------------------------------------
    def build_head(self, hidden_size: int) -> NLPHead:
        return SpanNERHead(hidden_size, len(self.classes), self.max_span_width, self.width_dim,
                           self.head.hidden, self.head.dropout)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None,
                     mask: Tensor | None = None) -> Tensor:
        return masked_mean(token_cross_entropy(outputs, target), target != IGNORE, weight, mask)

    # -- serving (mtlkit.serve.text) ---------------------------------------------------------
    def example_from_json(self, value: Any) -> IESentence:
        return IESentence(tokens=words(value))

    @property
    def single_text(self) -> bool:
        return True

    def input_problems(self, examples: Sequence[IESentence], tokenizer: Any) -> dict[int, str]:
        return too_long(token_counts(tokenizer, [list(ex.tokens) for ex in examples], split_into_words=True), self.max_length, self.name)

    # -- evaluation ----------------------------------------------------------------------
    def _predicted(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable) -> list[tuple[int, int, int, str]]:
        labels = stack_outputs(outputs).argmax(-1).masked_fill(table.targets[self.name] == IGNORE, 0)
        rows, slots = labels.nonzero(as_tuple=True)
        words = table.extras["span_words"][rows, slots].tolist()
        examples = table.extras["example_index"][rows].tolist()
        return [(e, s, t, self.classes[c]) for e, (s, t), c in zip(examples, words, labels[rows, slots].tolist())]

    def predict_entities(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                         examples: Sequence[IESentence]) -> list[IESentence]:
        """The examples with their entities replaced by the predicted ones (gold relations kept)."""
        found: dict[int, list[Entity]] = {}
        for e, s, t, kind in self._predicted(outputs, table):
            found.setdefault(e, []).append(Entity(s, t, kind))
        return [ex.with_entities(found.get(e, [])) for e, ex in enumerate(examples)]

    def evaluate(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                 examples: Sequence[IESentence]) -> dict[str, float]:
        rows = set(table.extras["example_index"].tolist())
        gold = [(e, x.start, x.end, x.type) for e in rows for x in examples[e].entities]
        scores = span_metrics.prf(self._predicted(outputs, table), gold)
        values = {"entity_precision": scores.precision, "entity_recall": scores.recall, "entity_f1": scores.f1}
        return {k: v for k, v in values.items() if self.metrics is None or k in self.metrics}

    def predict_records(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                        examples: Sequence[IESentence]) -> list[dict[str, Any]]:
        """``{"tokens", "entities": [{"start", "end", "type", "text"}]}`` per sentence (inclusive word spans)."""
        return [{"tokens": list(ex.tokens),
                 "entities": [{"start": e.start, "end": e.end, "type": e.type, "text": ex.span_text(e.span)} for e in ex.entities]}
                for ex in self.predict_entities(outputs, table, examples)]


__all__ = ["NONE", "SpanNERHead", "SpanNERTask", "enumerate_spans"]
