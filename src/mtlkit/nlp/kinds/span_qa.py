"""Extractive QA (SQuAD style) with an auxiliary "this window contains the answer" classifier.

**Span prediction** (BERT, Devlin et al. 2019, §4.2): the question and the context are packed
as ``[CLS] question [SEP] context [SEP]``; a long context is cut into windows of
``max_length`` tokens that overlap by ``doc_stride`` tokens. Two logits per token give

    P_start(i) = softmax_i(S·h_i),   P_end(j) = softmax_j(E·h_j)

and a window whose context does not hold the whole answer is trained to point both at
position 0 ([CLS]). Positions outside the context (question, separators, padding) are masked.
Loss per window: (CE(start) + CE(end)) / 2.

**Decoding** scores a span (i, j) by S·h_i + E·h_j over context tokens with
``i ≤ j < i + max_answer_length`` only — the candidates are built as (start, length) pairs, so an
end before its start cannot be returned — and keeps the best span over all windows of a question.

**Auxiliary classifier** (the "paragraph contains the answer" task of multi-paragraph QA, e.g.
Clark & Gardner 2018; Min et al. 2018's sentence selector): with ``answer_classifier: true``
a logistic head on the pooled vector ([CLS] by default) predicts whether the window holds the answer, trained jointly
with loss ``span + answer_loss_weight · BCE``. At inference, windows whose probability is below
``answer_threshold`` are skipped (if all windows of a question are, the most likely one is kept,
since SQuAD v1.1 questions always have an answer).

**Unanswerable questions** (SQuAD 2.0, Rajpurkar et al. 2018; the BERT recipe, Devlin et al. 2019 §4.3):
with ``allow_unanswerable: true`` a question without an answer is a training example whose
windows all point at [CLS]. At inference a question's null score is the smallest
``s_null = S·h_[CLS] + E·h_[CLS]`` over its windows and ``ŝ = max_{i≤j} S·h_i + E·h_j`` its best
span; the prediction is null (``answer: ""``, ``answerable: false``) when ``s_null − ŝ > τ``.
``τ`` (``null_threshold``) is chosen after training on the **validation** split to maximise
SQuAD 2.0 F1 (:func:`best_null_threshold`, as the official evaluation script's ``best_f1``) and
stored in the run's ``calibration.json``; test scores, ``mtlkit predict``, ``mtlkit serve`` and the
ONNX export all read it from there. EM/F1 follow SQuAD 2.0: a null prediction is right iff the
gold is null. Without the option a question with no answer is a data error.

*Design choice:* the classifier is a second output of this kind, not a companion kind: it reads
exactly the same windows, and the filter needs its score inside the same decoding. The cost is
that a balancer sees one loss for both; ``answer_loss_weight`` sets their mix. "With vs without
the auxiliary task" is ``answer_classifier: true | false`` (plus ``answer_threshold`` to filter).

Head output: one tensor ``(B, L, 3)``: ``[..., 0]`` start logits, ``[..., 1]`` end logits,
``[:, 0, 2]`` the window's contains-answer logit (0 elsewhere; 0 everywhere without the classifier).
Inputs add ``tok:answer_mask`` ``(N, L)``: context positions and 0, where logits are not masked.
Targets ``(N, 3)`` long: start token, end token, contains-answer flag. Extras: ``example_index``
``(N,)`` and ``offsets`` ``(N, L, 2)`` character offsets of context tokens (-1 elsewhere).

Example:
    >>> import torch
    >>> start = torch.tensor([[0.0, 1.0, 5.0, 0.0]])
    >>> end = torch.tensor([[0.0, 9.0, 0.0, 2.0]])     # the best end (1) lies before the best start (2)
    >>> allowed = torch.tensor([[False, True, True, True]])
    >>> s, e, score = decode_spans(start, end, allowed, max_answer_length=2)
    >>> s.tolist(), e.tolist(), score.tolist()           # (1, 1): 1 + 9 beats (2, 3): 5 + 2
    ([1], [1], [10.0])
    >>> # null − best-span differences of 4 questions, F1 if answered, gold null or not
    >>> best_null_threshold(torch.tensor([3.0, 1.0, -1.0, -2.0]), torch.tensor([0.0, 1.0, 1.0, 1.0]),
    ...                     torch.tensor([True, False, False, False]))   # null only the first: τ between 3 and 1
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import DataError
from mtlkit.nlp import span_metrics
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.json_inputs import InputError, json_type, text, token_counts, too_long
from mtlkit.nlp.kinds._common import fit_length, head_layers, masked_mean, model_inputs, require_fast, stack_outputs
from mtlkit.nlp.records import QAExample

MASKED = -1e4  # a masked logit: far below any real one, and finite in fp16
# (N, L): where start/end logits are not masked (context tokens, and 0 for the null answer).
# The "tok:" prefix makes the model trim it with the text inputs.
ANSWER_MASK = "tok:answer_mask"
MAX_WINDOWS = 16  # served contexts: at most this many windows' worth of word pieces


def decode_spans(start_logits: Tensor, end_logits: Tensor, allowed: Tensor,
                 max_answer_length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Best span per window: ``(start, end, score)``, each ``(N,)``, with start ≤ end < start + max length.

    ``allowed`` ``(N, L)`` marks positions an answer may cover; a window with no allowed span gets
    score ``-inf`` (and start = end = 0).
    """
    neg = torch.tensor(-math.inf)
    s = torch.where(allowed, start_logits.float(), neg)
    e = torch.where(allowed, end_logits.float(), neg)
    width = min(max_answer_length, s.shape[1])
    # e_by_length[n, i, d] = e[n, i + d]: candidates are (start i, length d + 1), never end < start.
    e_by_length = F.pad(e, (0, width - 1), value=-math.inf).unfold(1, width, 1)
    scores = (s.unsqueeze(-1) + e_by_length).flatten(1)
    best, flat = scores.max(dim=1)
    start, offset = flat // width, flat % width
    return start, start + offset, best


def best_null_threshold(null_minus_span: Tensor, answered_f1: Tensor, gold_null: Tensor) -> float:
    """τ maximising SQuAD 2.0 F1 when question ``q`` is predicted null iff ``null_minus_span[q] > τ``.

    ``answered_f1[q]``: F1 of the best span against the gold (0 for a null gold); a null prediction
    scores 1 iff ``gold_null[q]``. Sorting the differences in decreasing order, nulling the first
    ``k`` questions scores ``Σ_{i≤k} null_i + Σ_{i>k} f1_i``; the best ``k`` (ties between equal
    differences cannot be split) gives τ midway between the ``k``-th and ``k+1``-th differences.
    """
    diff = null_minus_span.double().clamp(-1e9, 1e9)  # a question with no span at all: +inf, always null
    order = torch.argsort(diff, descending=True, stable=True)
    d, f1, null = diff[order], answered_f1.double()[order], gold_null.double()[order]
    n = len(d)
    # score[k] = nulls among the first k + F1 of the rest, k = 0..n
    score = torch.cat([torch.zeros(1, dtype=torch.double), torch.cumsum(null, 0)]) + torch.cat(
        [torch.flip(torch.cumsum(torch.flip(f1, [0]), 0), [0]), torch.zeros(1, dtype=torch.double)])
    splittable = torch.ones(n + 1, dtype=torch.bool)
    splittable[1:n] = d[:-1] > d[1:]
    k = int(torch.where(splittable, score, torch.tensor(-1.0, dtype=torch.double)).argmax())
    if n == 0:
        return 0.0
    if k == 0:
        return float(d[0]) + 1.0
    if k == n:
        return float(d[-1]) - 1.0
    return float(d[k] + (d[k - 1] - d[k]) / 2)


class SpanQAHead(NLPHead):
    def __init__(self, hidden_size: int, hidden: Sequence[int], dropout: float, answer_classifier: bool) -> None:
        super().__init__()
        self.span = head_layers(hidden_size, hidden, dropout, 2)
        self.answer = head_layers(hidden_size, hidden, dropout, 1) if answer_classifier else None

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        length = sequence.shape[1]
        logits = self.span(sequence)
        allowed = inputs[ANSWER_MASK][:, :length].unsqueeze(-1)
        logits = logits.masked_fill(~allowed, MASKED)
        if self.answer is None:
            has_answer = logits.new_zeros(sequence.shape[0], length, 1)
        else:  # the window's logit sits at position 0, the [CLS] state it is read from
            has_answer = F.pad(self.answer(pooled).view(-1, 1, 1), (0, 0, 0, length - 1))
        return torch.cat([logits, has_answer.to(logits.dtype)], dim=-1)


@NLP_KINDS.register("span_qa")
class SpanQATask(NLPTask):
    kind: ClassVar[str] = "span_qa"
    default_metrics: ClassVar[list[str]] = ["squad_em", "squad_f1"]
    supported_metrics: ClassVar[list[str]] = ["squad_em", "squad_f1", "answer_window_accuracy"]
    token_level: ClassVar[bool] = True

    max_length: int = Field(default=384, ge=16)
    doc_stride: int = Field(default=128, ge=0)  # tokens shared by consecutive windows
    max_question_length: int = Field(default=64, ge=1)
    max_answer_length: int = Field(default=30, ge=1)  # in tokens
    answer_classifier: bool = False
    answer_loss_weight: float = Field(default=0.5, ge=0.0)
    answer_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    allow_unanswerable: bool = False  # SQuAD 2.0: questions without an answer; null when s_null − best span > τ
    null_threshold: float | None = None  # τ; None: chosen on the validation split after training (calibration.json)

    @model_validator(mode="after")
    def _check(self) -> SpanQATask:
        if self.null_threshold is not None and not self.allow_unanswerable:
            raise ValueError("null_threshold decides unanswerable questions: set allow_unanswerable: true")
        if self.answer_threshold is not None and not self.answer_classifier:
            raise ValueError("answer_threshold filters windows by the answer classifier: set answer_classifier: true")
        if self.doc_stride >= self.max_length - self.max_question_length - 4:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be below max_length - max_question_length - 4 "
                             f"({self.max_length - self.max_question_length - 4}) so that windows advance")
        return self

    # -- data ----------------------------------------------------------------------------
    def check_examples(self, examples: Sequence[QAExample], split: str) -> None:
        """A labelled question without an answer is a data error unless ``allow_unanswerable``."""
        if self.allow_unanswerable:
            return
        for ex in examples:
            if not ex.answers:
                raise DataError(f"{ex.source or ex.id}: {split} question {ex.id!r} has no answer; for SQuAD 2.0-style "
                                f"unanswerable questions set allow_unanswerable: true on task {self.name!r}")

    def _questions(self, examples: Sequence[QAExample], tokenizer: Any) -> list[str]:
        """Questions cut to ``max_question_length`` tokens, so a window always has room for context."""
        encoded = tokenizer([ex.question for ex in examples], add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for ex, offsets in zip(examples, encoded["offset_mapping"]):
            long = len(offsets) > self.max_question_length
            out.append(ex.question[: offsets[self.max_question_length - 1][1]] if long else ex.question)
        return out

    def featurize(self, examples: Sequence[QAExample], tokenizer: Any) -> EncodedTable:
        require_fast(tokenizer, self.name)
        if not examples:
            raise DataError(f"task {self.name!r}: no questions to featurize")
        for ex in examples:
            for a in ex.answers:
                if ex.context[a.start: a.start + len(a.text)] != a.text:
                    raise DataError(f"{ex.source or ex.id}: answer {a.text!r} is not at character {a.start} of its context")
        enc = tokenizer(self._questions(examples, tokenizer), [ex.context for ex in examples],
                        truncation="only_second", max_length=self.max_length, stride=self.doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest")
        n, length = len(enc["input_ids"]), len(enc["input_ids"][0])
        example_index = torch.tensor(enc["overflow_to_sample_mapping"], dtype=torch.long)
        offsets = torch.full((n, length, 2), -1, dtype=torch.long)
        target = torch.zeros(n, 3, dtype=torch.long)  # (0, 0, 0): no answer here, point at [CLS]
        for i in range(n):
            context = [t for t, s in enumerate(enc.sequence_ids(i)) if s == 1]
            if not context:
                continue
            spans = enc["offset_mapping"][i]
            offsets[i, context] = torch.tensor([spans[t] for t in context], dtype=torch.long)
            answers = examples[int(example_index[i])].answers
            if answers:
                target[i] = torch.tensor(self._answer_tokens(answers[0].start, answers[0].start + len(answers[0].text),
                                                             spans, context[0], context[-1]))
        answer_mask = offsets[..., 0] >= 0
        answer_mask[:, 0] = True  # the null answer
        inputs = model_inputs(enc)
        inputs[ANSWER_MASK] = answer_mask
        return EncodedTable(inputs=inputs, targets={self.name: target}, masks={self.name: torch.ones(n, dtype=torch.bool)},
                            extras={"example_index": example_index, "offsets": offsets})

    @staticmethod
    def _answer_tokens(begin: int, end: int, spans: Sequence[tuple[int, int]], first: int, last: int) -> tuple[int, int, int]:
        """Token span of characters [begin, end) if the window's context holds all of it, else (0, 0, 0)."""
        if spans[first][0] > begin or spans[last][1] < end:
            return (0, 0, 0)
        start = first
        while start <= last and spans[start][1] <= begin:  # first token ending after the answer's start
            start += 1
        stop = last
        while stop >= first and spans[stop][0] >= end:  # last token starting before the answer's end
            stop -= 1
        return (start, stop, 1) if start <= stop else (0, 0, 0)

    # -- serving (mtlkit.serve.text) ---------------------------------------------------------
    def example_from_json(self, value: Any) -> QAExample:
        """``{"question": …, "context": …}`` (optional ``"id"``: echoed in the answer)."""
        if not isinstance(value, dict):
            raise InputError(f'an input must be {{"question": ..., "context": ...}}, got {json_type(value)}')
        unknown = sorted(set(value) - {"id", "question", "context"})
        if unknown:
            raise InputError(f'unknown field(s) {", ".join(map(repr, unknown))}: send {{"question": ..., "context": ..., "id": ...}}')
        ident = value.get("id", "")
        if not isinstance(ident, (str, int)) or isinstance(ident, bool):
            raise InputError(f'"id" must be a string or an integer, got {json_type(ident)}')
        return QAExample(str(ident), text(value.get("question"), '"question"'), text(value.get("context"), '"context"'), ())

    def input_problems(self, examples: Sequence[QAExample], tokenizer: Any) -> dict[int, str]:
        """A question longer than ``max_question_length``, or a context of more than MAX_WINDOWS windows."""
        problems = too_long(token_counts(tokenizer, [ex.question for ex in examples]), self.max_question_length + 2, self.name,
                            "max_question_length (+2 special tokens)")
        limit = MAX_WINDOWS * (self.max_length - self.max_question_length - 3)
        for i, n in enumerate(token_counts(tokenizer, [ex.context for ex in examples])):
            if i not in problems and n - 2 > limit:
                problems[i] = (f"the context's {n - 2} word pieces exceed the {limit} of {MAX_WINDOWS} windows of task "
                               f"{self.name!r} (max_length {self.max_length}): split the context")
        return problems

    # -- model ---------------------------------------------------------------------------
    def build_head(self, hidden_size: int) -> NLPHead:
        return SpanQAHead(hidden_size, self.head.hidden, self.head.dropout, self.answer_classifier)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None,
                     mask: Tensor | None = None) -> Tensor:
        logits = outputs.float()
        row_loss = (F.cross_entropy(logits[..., 0], target[:, 0], reduction="none")
                    + F.cross_entropy(logits[..., 1], target[:, 1], reduction="none")) / 2
        if self.answer_classifier and self.answer_loss_weight > 0:
            bce = F.binary_cross_entropy_with_logits(logits[:, 0, 2], target[:, 2].to(logits.dtype), reduction="none")
            row_loss = row_loss + self.answer_loss_weight * bce
        return masked_mean(row_loss, torch.ones_like(row_loss, dtype=torch.bool), weight, mask)

    # -- evaluation ----------------------------------------------------------------------
    def _window_scores(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable):
        offsets = table.extras["offsets"]
        logits = fit_length(stack_outputs(outputs).float(), offsets.shape[1])
        start, end, score = decode_spans(logits[..., 0], logits[..., 1], offsets[..., 0] >= 0, self.max_answer_length)
        return start, end, score, torch.sigmoid(logits[:, 0, 2]), logits[:, 0, 0] + logits[:, 0, 1]

    def predict_answers(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                        examples: Sequence[QAExample]) -> dict[str, str]:
        """The answer text per question id, best span over the question's (kept) windows."""
        texts, _ = self._predict(outputs, table, examples)
        return {examples[i].id: text for i, text in texts.items()}

    def _predict(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                 examples: Sequence[QAExample]) -> tuple[dict[int, str], Tensor]:
        """The answer per example index ("" for null; ids may repeat: served questions often have none), p(answer) per window."""
        spans, diffs, p_answer = self._best_spans(outputs, table, examples)
        if not self.allow_unanswerable:
            return spans, p_answer
        return {ex: ("" if diffs[ex] > self.threshold else text) for ex, text in spans.items()}, p_answer

    @property
    def threshold(self) -> float:
        """τ in use: ``null_threshold``, else 0 (BERT's default) before a run has calibrated one."""
        return 0.0 if self.null_threshold is None else self.null_threshold

    def _best_spans(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                    examples: Sequence[QAExample]) -> tuple[dict[int, str], dict[int, float], Tensor]:
        """Best span text per example index, its ``s_null − ŝ`` (+inf without a span), and p(answer) per window."""
        start, end, score, p_answer, null = self._window_scores(outputs, table)
        offsets, example_index = table.extras["offsets"], table.extras["example_index"].tolist()
        kept = torch.ones_like(score, dtype=torch.bool)
        if self.answer_threshold is not None:
            kept = p_answer >= self.answer_threshold
        windows: dict[int, list[int]] = {}
        for w, ex in enumerate(example_index):
            windows.setdefault(ex, []).append(w)
        answers: dict[int, str] = {}
        diffs: dict[int, float] = {}
        for ex, ws in windows.items():
            candidates = [w for w in ws if kept[w]] or [max(ws, key=lambda w: float(p_answer[w]))]
            best = max(candidates, key=lambda w: float(score[w]))
            diffs[ex] = min(float(null[w]) for w in ws) - float(score[best])  # +inf when no span
            if score[best] == -math.inf:  # no window had context tokens
                answers[ex] = ""
                continue
            begin, stop = int(offsets[best, start[best], 0]), int(offsets[best, end[best], 1])
            answers[ex] = examples[ex].context[begin:stop]
        return answers, diffs, p_answer

    def calibrate(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable, examples: Sequence[QAExample]) -> dict[str, Any]:
        """``{"null_threshold": τ}`` maximising F1 on these (validation) outputs, when τ is not set."""
        if not self.allow_unanswerable or self.null_threshold is not None:
            return {}
        return {"null_threshold": self._choose_threshold(*self._best_spans(outputs, table, examples)[:2], examples)}

    def _choose_threshold(self, spans: dict[int, str], diffs: dict[int, float], examples: Sequence[QAExample]) -> float:
        ids = sorted(spans)
        gold = [[a.text for a in examples[i].answers] for i in ids]
        f1 = torch.tensor([span_metrics.squad_f1(spans[i], g) if spans[i] else float(not g) for i, g in zip(ids, gold)])
        return best_null_threshold(torch.tensor([diffs[i] for i in ids]), f1, torch.tensor([not g for g in gold]))

    def evaluate(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                 examples: Sequence[QAExample]) -> dict[str, float]:
        """SQuAD EM/F1; with unanswerable questions and no ``null_threshold`` yet, at the τ best on this split (validation)."""
        spans, diffs, p_answer = self._best_spans(outputs, table, examples)
        predicted = spans
        if self.allow_unanswerable:
            tau = self._choose_threshold(spans, diffs, examples) if self.null_threshold is None else self.null_threshold
            predicted = {ex: ("" if diffs[ex] > tau else text) for ex, text in spans.items()}
        pairs = [(text, [a.text for a in examples[i].answers]) for i, text in predicted.items()]
        values = {
            "squad_em": sum(span_metrics.squad_exact_match(p, g) for p, g in pairs) / len(pairs),
            "squad_f1": sum(span_metrics.squad_f1(p, g) for p, g in pairs) / len(pairs),
        }
        if self.answer_classifier:
            threshold = 0.5 if self.answer_threshold is None else self.answer_threshold
            target = table.targets[self.name][:, 2].bool()
            values["answer_window_accuracy"] = float(((p_answer >= threshold) == target).float().mean())
        return {k: v for k, v in values.items() if self.metrics is None or k in self.metrics}

    def predict_records(self, outputs: Tensor | Sequence[Tensor], table: EncodedTable,
                        examples: Sequence[QAExample]) -> list[dict[str, Any]]:
        """``{"id", "answer"}`` per question, in ``examples`` order; with ``allow_unanswerable`` also
        ``"answerable"`` (False: the null answer, ``answer`` is "")."""
        answers, _ = self._predict(outputs, table, examples)
        if not self.allow_unanswerable:
            return [{"id": ex.id, "answer": answers.get(i, "")} for i, ex in enumerate(examples)]
        return [{"id": ex.id, "answer": answers.get(i, ""), "answerable": bool(answers.get(i, ""))} for i, ex in enumerate(examples)]


__all__ = ["SpanQAHead", "SpanQATask", "best_null_threshold", "decode_spans"]
