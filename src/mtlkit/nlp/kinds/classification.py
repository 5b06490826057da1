"""Single-sentence and sentence-pair classification (SST-2, RTE, MRPC, …).

MT-DNN's classification output (Liu et al., ACL 2019, §3.1, Eq. 1): ``P(c | X) =
softmax(W_t · x)`` on the pooled vector ``x``, trained with cross-entropy (Eq. 6). A row with a
``text_pair`` is encoded as ``[CLS] text [SEP] text_pair [SEP]``. ``labels`` fixes the class order
(default: the sorted labels of the training data, written back to the run's config.yaml);
``positive_label`` is the class ``f1`` scores (default: the last label, i.e. ``"1"`` of 0/1).

Example (a task definition; featurize needs a tokenizer, see tests/test_nlp_core.py):
    >>> import torch
    >>> from mtlkit.nlp.examples import TextExample
    >>> task = ClassificationTask(name="rte", metrics=["accuracy", "f1"])
    >>> task = task.resolve([TextExample("a", "b", "entailment"), TextExample("c", "d", "not_entailment")])
    >>> task.labels, task.positive_label
    (['entailment', 'not_entailment'], 'not_entailment')
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> round(task.compute_loss(logits, torch.tensor([0, 1]), None, torch.tensor([True, False])).item(), 4)
    0.1269
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import field_validator
from torch import Tensor

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import ConfigError, DataError
from mtlkit.metrics import METRICS
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.examples import TextExample
from mtlkit.nlp.featurize import label_indices, tokenize
from mtlkit.nlp.heads import PooledHead, masked_mean, safe_targets
from mtlkit.nlp.json_inputs import pairs_of, text_example, token_counts, too_long


@NLP_KINDS.register("classification")
class ClassificationTask(NLPTask):
    kind: ClassVar[str] = "classification"
    default_metrics: ClassVar[list[str]] = ["accuracy"]
    supported_metrics: ClassVar[list[str]] = ["accuracy", "f1", "f1_macro", "mcc"]

    pooled_head: ClassVar[bool] = True

    labels: list[str] | None = None
    positive_label: str | None = None
    pairs: bool | None = None  # rows are text pairs (true) or single texts (false); default: from the training data

    @field_validator("labels", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else value

    @field_validator("positive_label", mode="before")
    @classmethod
    def _as_string(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @property
    def mixed_texts(self) -> bool:
        """Whether single texts and pairs may share the table (texts pooled from several tasks)."""
        return False

    def label_of(self, example: Any) -> Any:
        """The raw label of an example (the domain kind reads ``example.domain`` instead)."""
        return example.label

    def resolve(self, train_examples: Sequence[Any]) -> ClassificationTask:
        labels = self.labels or sorted({str(v) for v in map(self.label_of, train_examples) if v is not None})
        if len(labels) < 2:
            raise DataError(f"task {self.name!r}: its training data holds fewer than two labels ({labels}); set `labels`")
        positive = self.positive_label or labels[-1]
        if positive not in labels:
            raise ConfigError(f"tasks.{self.name}.positive_label: {positive!r} is not one of {labels}")
        pairs = self.pairs if self.pairs is not None or self.mixed_texts else pairs_of(train_examples)
        return self.model_copy(update={"labels": labels, "positive_label": positive, "pairs": pairs})

    def _labels(self) -> list[str]:
        if not self.labels:
            raise ConfigError(f"task {self.name!r}: labels are unknown; call resolve(train_examples) first")
        return self.labels

    def featurize(self, examples: Sequence[Any], tokenizer: Any) -> EncodedTable:
        sources = [getattr(e, "source", "") for e in examples]
        pairs = [getattr(e, "text_pair", None) for e in examples]
        inputs = tokenize(tokenizer, [e.text for e in examples], pairs, self.max_length, sources, mixed=self.mixed_texts)
        target, mask = label_indices([self.label_of(e) for e in examples], self._labels(), self.name, sources)
        return EncodedTable(inputs, {self.name: target}, {self.name: mask})

    def build_head(self, hidden_size: int) -> NLPHead:
        return PooledHead(hidden_size, len(self._labels()), self.head)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        losses = F.cross_entropy(outputs.float(), safe_targets(target, mask), reduction="none")
        return masked_mean(losses, weight, mask)

    def evaluate(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> dict[str, float]:
        keep = table.masks[self.name].numpy()
        scores, labels = outputs.float().numpy()[keep], table.targets[self.name].numpy()[keep]
        positive = self._labels().index(self.positive_label or self._labels()[-1])
        results = {}
        for name in self.metrics or self.default_metrics:
            if name == "f1":  # the configured positive class, whatever its index
                results[name] = METRICS.get(name)((scores.argmax(1) == positive).astype(np.float64), labels == positive)
            else:
                results[name] = METRICS.get(name)(scores, labels)
        return results

    # -- serving (mtlkit.serve.text) ---------------------------------------------------------
    def example_from_json(self, value: Any) -> TextExample:
        return text_example(value, None if self.mixed_texts else self.pairs, self.name)

    @property
    def single_text(self) -> bool:
        return self.pairs is not True

    def input_problems(self, examples: Sequence[Any], tokenizer: Any) -> dict[int, str]:
        counts = token_counts(tokenizer, [e.text for e in examples], [e.text_pair for e in examples])
        return too_long(counts, self.max_length, self.name)

    @property
    def prediction_width(self) -> int | None:
        return len(self.labels) if self.labels else None

    def prediction_features(self, outputs: Tensor) -> Tensor:
        return torch.softmax(outputs.float(), dim=-1)  # the predicted class distribution

    def predict(self, outputs: Tensor) -> list[str]:
        """Class names of ``(N, C)`` outputs."""
        labels = self._labels()
        return [labels[i] for i in outputs.argmax(-1).tolist()]

    def predict_records(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> list[dict[str, Any]]:
        """``{"label": name, "probabilities": {name: p}}`` per row (the softmax of the logits)."""
        labels = self._labels()
        return [{"label": name, "probabilities": dict(zip(labels, p))}
                for name, p in zip(self.predict(outputs), torch.softmax(outputs.float(), dim=-1).tolist())]


__all__ = ["ClassificationTask"]
