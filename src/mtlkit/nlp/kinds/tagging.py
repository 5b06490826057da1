"""Token tagging (NER with BIO tags), word-piece aware: BERT's tagging recipe (Devlin et al. 2019, §5.3).

A word the tokenizer splits into several pieces is labelled once, on its **first** sub-token;
the other pieces and the special tokens get -100 and carry no loss (the fast tokenizer's
``word_ids`` tell which is which). The head is a softmax over tags per token, no CRF:

    p(y_t | x) = softmax(W h_t + b),   loss = mean over labelled tokens t of −log p(y*_t | x)

Evaluation reads the tag predicted at each word's first sub-token (words cut off by
``max_length`` count as ``O``, so truncation costs recall honestly) and scores entity-level
micro P/R/F1 as seqeval / conlleval do (:func:`mtlkit.nlp.span_metrics.entity_scores`).

``scheme: labels`` takes any tag set — part-of-speech (CoNLL-2003's second column, Universal
Dependencies' UPOS) or chunk tags — as an auxiliary or main task: the same softmax head, the tag
set taken (sorted) from the training data, scored by ``token_accuracy`` (a word cut off by
``max_length`` counts as wrong). The BIO scheme refuses non-BIO tags with a one-line error that
points to ``scheme: labels``.

Featurized table: ``inputs`` input_ids / attention_mask (/ token_type_ids) ``(N, L)``, ``L ≤ max_length``;
``targets[name]`` ``(N, L)`` tag ids with -100; ``extras["word_index"]`` ``(N, L)``: the word a
first sub-token starts, -1 elsewhere; ``extras["example_index"]`` ``(N,)``.

Example:
    >>> first_subtokens([None, 0, 0, 0, 1, None])        # "unbelievable" → un ##believ ##able
    [-1, 0, -1, -1, 1, -1]
    >>> task = TaggingTask(name="ner").resolve([TaggedSentence(("Paris", "Texas"), ("B-loc", "I-loc"))])
    >>> task.labels, task.label_ids(["B-loc", "I-loc", "O"], source="a.conll:3")
    (['O', 'B-loc', 'I-loc'], [1, 2, 0])
    >>> pos = TaggingTask(name="pos", scheme="labels").resolve([TaggedSentence(("Paris", "sleeps"), ("NNP", "VBZ"))])
    >>> pos.labels, pos.metrics
    (['NNP', 'VBZ'], ['token_accuracy'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import model_validator
from torch import Tensor

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import ConfigError, DataError
from mtlkit.nlp import span_metrics
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.json_inputs import token_counts, too_long
from mtlkit.nlp.json_inputs import words as split_words
from mtlkit.nlp.kinds._common import IGNORE, fit_length, head_layers, masked_mean, model_inputs, require_fast, stack_outputs, token_cross_entropy, trim
from mtlkit.nlp.records import TaggedSentence


def _is_bio(tag: str) -> bool:
    return tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def first_subtokens(word_ids: Sequence[int | None]) -> list[int]:
    """Per position: the word index where a word's first sub-token sits, else -1."""
    out, previous = [], None
    for w in word_ids:
        out.append(w if w is not None and w != previous else -1)
        previous = w
    return out


class TaggingHead(NLPHead):
    """Per-token tag logits ``(B, L, C)`` from the encoder's sequence output."""

    def __init__(self, hidden_size: int, num_labels: int, hidden: Sequence[int] = (), dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = head_layers(hidden_size, hidden, dropout, num_labels)

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        return self.layers(sequence)


@NLP_KINDS.register("tagging")
class TaggingTask(NLPTask):
    kind: ClassVar[str] = "tagging"
    default_metrics: ClassVar[list[str]] = ["entity_f1", "entity_precision", "entity_recall"]
    supported_metrics: ClassVar[list[str]] = ["entity_f1", "entity_precision", "entity_recall", "token_accuracy"]
    token_level: ClassVar[bool] = True

    labels: list[str] | None = None  # the tag set ("O", B-type, I-type); default: from the training data
    scheme: Literal["bio", "labels"] = "bio"  # labels: any tag set (POS, chunks), scored by token accuracy

    @model_validator(mode="after")
    def _tag_set(self) -> TaggingTask:
        labels = self.labels
        entity = [m for m in self.metrics or [] if m.startswith("entity_")]
        if self.scheme == "labels" and entity:
            raise ValueError(f"metrics: {entity[0]} needs BIO entities (scheme: bio); scheme labels is scored by token_accuracy")
        if self.scheme == "bio" and "token_accuracy" in (self.metrics or []):
            raise ValueError("metrics: token_accuracy is for scheme: labels (POS, chunks); BIO tagging is scored by entity_f1")
        if labels is None:
            return self
        if len(set(labels)) != len(labels):
            raise ValueError("labels: each tag once")
        if self.scheme == "labels":
            return self
        if "O" not in labels:
            raise ValueError("labels: the BIO tag set needs 'O' (for another tag set, e.g. POS, set scheme: labels)")
        bad = [t for t in labels if not _is_bio(t)]
        if bad:
            raise ValueError(f"labels: {bad} are not BIO tags (O, B-type, I-type); for any other tag set (POS, chunks) set scheme: labels")
        return self

    def metrics_by_default(self) -> list[str]:
        return ["token_accuracy"] if self.scheme == "labels" else list(self.default_metrics)

    # -- data ----------------------------------------------------------------------------
    def resolve(self, train_examples: Sequence[TaggedSentence]) -> TaggingTask:
        """The task with ``labels`` taken from the training data when not given (BIO: O, then B-/I- per type;
        ``scheme: labels``: the tags seen, sorted)."""
        metrics = self.metrics or (["token_accuracy"] if self.scheme == "labels" else None)
        task = self.model_copy(update={"metrics": metrics}) if metrics != self.metrics else self
        if task.labels:
            return task
        tags = {t for ex in train_examples for t in ex.tags}
        if task.scheme == "labels":
            return task.model_copy(update={"labels": sorted(tags)})
        bad = sorted(t for t in tags if not _is_bio(t))
        if bad:
            raise ConfigError(f"task {self.name!r}: tag {bad[0]!r} of its training data is not a BIO tag (O, B-type, I-type); "
                              "for POS, chunking or any other tag set set scheme: labels")
        return task.model_copy(update={"labels": span_metrics.bio_tag_set(tags)})

    def _labels(self) -> list[str]:
        if not self.labels:
            raise ConfigError(f"task {self.name!r}: labels are unknown; set them or call resolve(train_examples) first")
        return self.labels

    def label_ids(self, tags: Sequence[str], source: str = "") -> list[int]:
        index = {t: i for i, t in enumerate(self._labels())}
        try:
            return [index[t] for t in tags]
        except KeyError as e:
            # Typically a rare tag outside the training rows (a subsample): the label set was read from them.
            raise DataError(f"{source or 'tagging data'}: tag {e.args[0]!r} is not one of task {self.name!r}'s "
                            f"labels {self.labels} (list the whole tag set in the task's `labels:` when "
                            "the training rows do not show every tag)") from None

    def featurize(self, examples: Sequence[TaggedSentence], tokenizer: Any) -> EncodedTable:
        require_fast(tokenizer, self.name)
        if not examples:
            raise DataError(f"task {self.name!r}: no sentences to featurize")
        for ex in examples:
            if not ex.tokens or len(ex.tokens) != len(ex.tags):
                raise DataError(f"{ex.source or 'tagging data'}: {len(ex.tokens)} tokens but {len(ex.tags)} tags")
        encoding = tokenizer([list(ex.tokens) for ex in examples], is_split_into_words=True, truncation=True,
                             max_length=self.max_length, padding="longest")
        word_index = torch.tensor([first_subtokens(encoding.word_ids(i)) for i in range(len(examples))])
        labels = torch.full_like(word_index, IGNORE)
        for i, ex in enumerate(examples):
            ids = torch.tensor(self.label_ids(ex.tags, ex.source))
            at = word_index[i] >= 0
            labels[i, at] = ids[word_index[i, at]]
        return EncodedTable(
            inputs=model_inputs(encoding),
            targets={self.name: labels},
            masks={self.name: (labels != IGNORE).any(dim=1)},  # a row whose words all vanished teaches nothing
            extras={"word_index": word_index, "example_index": torch.arange(len(examples))},
        )

    # -- model ---------------------------------------------------------------------------
    def build_head(self, hidden_size: int) -> NLPHead:
        return TaggingHead(hidden_size, len(self._labels()), self.head.hidden, self.head.dropout)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None,
                     mask: Tensor | None = None) -> Tensor:
        target = trim(target, outputs.shape[1])
        return masked_mean(token_cross_entropy(outputs, target), target != IGNORE, weight, mask)

    # -- serving (mtlkit.serve.text) ---------------------------------------------------------
    def example_from_json(self, value: Any) -> TaggedSentence:
        tokens = split_words(value)
        return TaggedSentence(tokens, ("O",) * len(tokens))

    @property
    def single_text(self) -> bool:
        return True

    def input_problems(self, examples: Sequence[TaggedSentence], tokenizer: Any) -> dict[int, str]:
        return too_long(token_counts(tokenizer, [list(ex.tokens) for ex in examples], split_into_words=True), self.max_length, self.name)

    # -- evaluation ----------------------------------------------------------------------
    def predict_tags(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable) -> list[list[str]]:
        """Word-level tags per table row (``O`` for words the tokenizer or truncation dropped)."""
        word_index = table.extras["word_index"]
        predicted = fit_length(stack_outputs(outputs).argmax(-1), word_index.shape[1])
        labels = self._labels()
        lengths = (word_index.max(dim=1).values + 1).tolist()
        fill = "O" if self.scheme == "bio" else ""  # scheme labels: no tag means "not predicted" (wrong)
        rows: list[list[str]] = []
        for i, (words, ids) in enumerate(zip(word_index.tolist(), predicted.tolist())):
            tags = [fill] * lengths[i]
            for w, p in zip(words, ids):
                if w >= 0:
                    tags[w] = labels[p]
            rows.append(tags)
        return rows

    def evaluate(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                 examples: Sequence[TaggedSentence]) -> dict[str, float]:
        gold = [list(examples[i].tags) for i in table.extras["example_index"].tolist()]
        if self.scheme == "labels":
            accuracy = span_metrics.token_accuracy(gold, self.predict_tags(outputs, table))
            return {"token_accuracy": accuracy} if self.metrics is None or "token_accuracy" in self.metrics else {}
        predicted = [tags + ["O"] * (len(g) - len(tags)) for tags, g in zip(self.predict_tags(outputs, table), gold)]
        scores = span_metrics.entity_scores(gold, predicted)
        values = {"entity_precision": scores.precision, "entity_recall": scores.recall, "entity_f1": scores.f1}
        return {k: v for k, v in values.items() if self.metrics is None or k in self.metrics}

    def predict_records(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                        examples: Sequence[TaggedSentence]) -> list[dict[str, Any]]:
        """``{"tokens", "tags"}`` per sentence, one tag per word (``O`` past truncation)."""
        tags = self.predict_tags(outputs, table)
        fill = "O" if self.scheme == "bio" else ""
        return [{"tokens": list(ex.tokens), "tags": t + [fill] * (len(ex.tokens) - len(t))} for ex, t in zip(examples, tags)]


__all__ = ["TaggingHead", "TaggingTask", "first_subtokens"]
