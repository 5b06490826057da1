"""Sentence(-pair) regression: a real-valued score per row (STS-B similarity, 0–5).

MT-DNN's similarity output (Liu et al., ACL 2019, §3.1, Eq. 2): ``Sim(X1, X2) = w_t · x``, a
linear score on the pooled vector, trained with the mean squared error (Eq. 7). Reported with
Pearson and Spearman correlations, as GLUE does.

Example:
    >>> import torch
    >>> task = RegressionTask(name="stsb")
    >>> task.compute_loss(torch.tensor([1.0, 4.0]), torch.tensor([2.0, 0.0]), None, torch.tensor([True, False])).item()
    1.0
    >>> task.metrics or task.default_metrics
    ['pearson', 'spearman']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import DataError
from mtlkit.metrics import METRICS
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.examples import TextExample
from mtlkit.nlp.featurize import tokenize
from mtlkit.nlp.heads import PooledHead, masked_mean
from mtlkit.nlp.json_inputs import pairs_of, text_example, token_counts, too_long


@NLP_KINDS.register("regression")
class RegressionTask(NLPTask):
    kind: ClassVar[str] = "regression"
    default_metrics: ClassVar[list[str]] = ["pearson", "spearman"]
    supported_metrics: ClassVar[list[str]] = ["pearson", "spearman", "rmse", "mae"]
    pooled_head: ClassVar[bool] = True

    pairs: bool | None = None  # rows are text pairs (true) or single texts (false); default: from the training data

    def resolve(self, train_examples: Sequence[Any]) -> RegressionTask:
        return self if self.pairs is not None else self.model_copy(update={"pairs": pairs_of(train_examples)})

    # -- serving (mtlkit.serve.text) ---------------------------------------------------------
    def example_from_json(self, value: Any) -> TextExample:
        return text_example(value, self.pairs, self.name)

    @property
    def single_text(self) -> bool:
        return self.pairs is not True

    def input_problems(self, examples: Sequence[Any], tokenizer: Any) -> dict[int, str]:
        counts = token_counts(tokenizer, [e.text for e in examples], [e.text_pair for e in examples])
        return too_long(counts, self.max_length, self.name)

    @property
    def prediction_width(self) -> int | None:
        return 1

    def prediction_features(self, outputs: Tensor) -> Tensor:
        return outputs.float().reshape(-1, 1)

    def featurize(self, examples: Sequence[Any], tokenizer: Any) -> EncodedTable:
        sources = [getattr(e, "source", "") for e in examples]
        inputs = tokenize(tokenizer, [e.text for e in examples], [e.text_pair for e in examples], self.max_length, sources)
        target = torch.full((len(examples),), float("nan"))
        for row, example in enumerate(examples):
            if example.label is None:
                continue
            try:
                value = float(example.label)
            except (TypeError, ValueError):
                value = float("nan")
            if not math.isfinite(value):
                raise DataError(f"{sources[row] or f'row {row + 1}'}: score {example.label!r} of task {self.name!r} is not a finite number")
            target[row] = value
        return EncodedTable(inputs, {self.name: target}, {self.name: ~target.isnan()})

    def build_head(self, hidden_size: int) -> NLPHead:
        return PooledHead(hidden_size, 1, self.head)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        return masked_mean((outputs.float() - target.float()) ** 2, weight, mask)

    def evaluate(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> dict[str, float]:
        keep = table.masks[self.name].numpy()
        predictions, targets = outputs.float().numpy()[keep], table.targets[self.name].numpy()[keep]
        return {name: METRICS.get(name)(predictions, targets) for name in self.metrics or self.default_metrics}

    def predict_records(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"value": v} for v in outputs.float().reshape(-1).tolist()]


__all__ = ["RegressionTask"]
