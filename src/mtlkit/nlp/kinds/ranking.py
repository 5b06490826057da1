"""Pairwise ranking over candidates: score every (query, candidate) pair, softmax over candidates.

MT-DNN's relevance ranking (Liu et al., ACL 2019, §3.1, Eq. 4, and its pairwise ranking
objective, Eq. 5–6 in §3.2): ``Rel(Q, A) = w_t · x_{Q,A}`` on the pooled vector of
``[CLS] Q [SEP] A [SEP]`` (``g`` is the identity here), and for one relevant ``A⁺`` among the
candidates ``𝒜`` the loss ``−log exp(γ·Rel(Q, A⁺)) / Σ_{A∈𝒜} exp(γ·Rel(Q, A))``.

Inputs are ``(N, k, L)``: ``k = candidates`` per query (default: the most of any training
query); queries with fewer are padded with empty candidates that ``candidate_mask`` hides (their
score is :data:`~mtlkit.nlp.heads.PAD_LOGIT`). The model encodes the ``N·k`` pairs as one flat
batch and the head folds the scores back to ``(B, k)``. Metrics: ``accuracy@1`` and ``mrr``.

Example:
    >>> import torch
    >>> task = RankingTask(name="qnli", gamma=1.0)
    >>> scores = torch.tensor([[2.0, 0.0, -1e4]])          # the third candidate is padding
    >>> round(task.compute_loss(scores, torch.tensor([0]), None, torch.tensor([True])).item(), 4)
    0.1269
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import ConfigError, DataError
from mtlkit.metrics import METRICS
from mtlkit.nlp.base import NLP_KINDS, HeadOptions, NLPHead, NLPTask
from mtlkit.nlp.examples import RankingExample
from mtlkit.nlp.featurize import tokenize
from mtlkit.nlp.heads import PAD_LOGIT, PooledHead, masked_mean, safe_targets
from mtlkit.nlp.json_inputs import InputError, text, token_counts


class RankingHead(NLPHead):
    """Scores ``(B·k,)`` pairs with a :class:`PooledHead`, folded to ``(B, k)``; padding gets PAD_LOGIT."""

    def __init__(self, hidden_size: int, options: HeadOptions) -> None:
        super().__init__()
        self.score = PooledHead(hidden_size, 1, options)

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        candidate_mask = inputs["candidate_mask"]
        scores = self.score(sequence, pooled, inputs).view(candidate_mask.shape)
        return scores.masked_fill(~candidate_mask, PAD_LOGIT)


@NLP_KINDS.register("ranking")
class RankingTask(NLPTask):
    kind: ClassVar[str] = "ranking"
    default_metrics: ClassVar[list[str]] = ["accuracy@1", "mrr"]
    supported_metrics: ClassVar[list[str]] = ["accuracy@1", "mrr"]

    candidates: int | None = Field(default=None, ge=2)
    gamma: float = Field(default=1.0, gt=0.0)

    def resolve(self, train_examples: Sequence[Any]) -> RankingTask:
        if self.candidates is not None:
            return self
        most = max((len(e.candidates) for e in train_examples), default=0)
        if most < 2:
            raise DataError(f"task {self.name!r}: ranking needs queries with at least two candidates")
        return self.model_copy(update={"candidates": most})

    def featurize(self, examples: Sequence[Any], tokenizer: Any) -> EncodedTable:
        if self.candidates is None:
            raise ConfigError(f"task {self.name!r}: the number of candidates is unknown; call resolve(train_examples) first")
        k = self.candidates
        queries, pairs, sources = [], [], []
        candidate_mask = torch.zeros(len(examples), k, dtype=torch.bool)
        target = torch.full((len(examples),), -1, dtype=torch.long)
        for row, example in enumerate(examples):
            where = example.source or f"row {row + 1}"
            if len(example.candidates) > k:
                raise DataError(f"{where}: {len(example.candidates)} candidates, more than task {self.name!r}'s candidates={k}")
            if example.label is not None:
                if not 0 <= int(example.label) < len(example.candidates):
                    raise DataError(f"{where}: relevant candidate {example.label} is out of range for {len(example.candidates)} candidates")
                target[row] = int(example.label)
            candidate_mask[row, : len(example.candidates)] = True
            padded = list(example.candidates) + [""] * (k - len(example.candidates))
            queries += [example.query] * k
            pairs += padded
            sources += [where] * k
        flat = tokenize(tokenizer, queries, pairs, self.max_length, sources)
        inputs = {name: t.view(len(examples), k, -1) for name, t in flat.items()}
        inputs["candidate_mask"] = candidate_mask
        return EncodedTable(inputs, {self.name: target}, {self.name: target >= 0})

    def build_head(self, hidden_size: int) -> NLPHead:
        return RankingHead(hidden_size, self.head)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        losses = F.cross_entropy(self.gamma * outputs.float(), safe_targets(target, mask), reduction="none")
        return masked_mean(losses, weight, mask)

    def evaluate(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> dict[str, float]:
        keep = table.masks[self.name].numpy()
        scores, labels = outputs.float().numpy()[keep], table.targets[self.name].numpy()[keep]
        return {name: METRICS.get(name)(scores, labels) for name in self.metrics or self.default_metrics}

    def example_from_json(self, value: Any) -> RankingExample:
        """``{"query": …, "candidates": [text, …]}`` (at most ``candidates`` of them)."""
        if not isinstance(value, dict) or set(value) != {"query", "candidates"}:
            raise InputError('an input must be {"query": ..., "candidates": [text, ...]}')
        candidates = value["candidates"]
        if not isinstance(candidates, list) or not candidates:
            raise InputError('"candidates" must be a non-empty list of texts')
        if self.candidates is not None and len(candidates) > self.candidates:
            raise InputError(f"{len(candidates)} candidates, more than task {self.name!r}'s {self.candidates}")
        return RankingExample(text(value["query"], '"query"'), tuple(text(c, f"candidates[{i}]") for i, c in enumerate(candidates)))

    def input_problems(self, examples: Sequence[Any], tokenizer: Any) -> dict[int, str]:
        problems: dict[int, str] = {}
        for i, ex in enumerate(examples):
            worst = max(token_counts(tokenizer, [ex.query] * len(ex.candidates), list(ex.candidates)))
            if worst > self.max_length:
                problems[i] = f"{worst} word pieces (query and a candidate) exceed task {self.name!r}'s max_length of {self.max_length}"
        return problems

    def predict_records(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> list[dict[str, Any]]:
        """``{"best": index, "scores": [...]}`` per query: the relevance score of each of its own candidates."""
        rows = [row[: len(ex.candidates)] for ex, row in zip(examples, outputs.float().tolist())]
        return [{"best": row.index(max(row)) if row else None, "scores": row} for row in rows]


__all__ = ["RankingHead", "RankingTask"]
