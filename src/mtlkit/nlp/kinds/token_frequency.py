"""A token's corpus frequency as a per-token regression auxiliary ("predict the data's own distribution").

The target of word piece ``t`` is its add-α smoothed log relative frequency in the **training
split only** (never validation or test text, so the target leaks nothing of the held-out data),

    f(t) = log((c_t + α) / (N + α·V)),      c_t: count of t in the training texts, N = Σ_t c_t, V: vocabulary size,

standardised over the training tokens' occurrences, ``y(t) = (f(t) − μ) / σ`` (so the constant
predictor 0 has RMSE ≈ 1 on training-like text). A per-token head ``h_t → GELU MLP → ŷ_t``
reads the encoder states and is trained with the mean squared error over real tokens (no
specials, no padding); metric ``frequency_rmse``. Frequency prediction is one of the "data's own
distribution" auxiliaries of the practitioners' checklist; Plank, Søgaard & Goldberg (ACL 2016,
§2) predict each word's binned log training frequency, ``int(log freq_train(w))``, next to its
POS tag and sum the two losses; here the unbinned value is regressed per word piece.

The table is fitted by :meth:`TokenFrequencyTask.fit` from the run's training examples of this
task (``data: {from_tasks: [...]}`` takes the source tasks' *training* texts for its training
split); a task without training rows is a one-line config error.

Example:
    >>> import torch
    >>> task = TokenFrequencyTask(name="freq")
    >>> task.set_table(torch.tensor([0.0, 5.0, 1.0, 1.0, 0.0]))      # counts per token id
    >>> table = task.table
    >>> bool(table[1] > table[2] > table[0]), round(float(table[2] - table[3]), 6)   # more frequent → higher
    (True, 0.0)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from pydantic import Field, PrivateAttr
from torch import Tensor, nn

from mtlkit.data.batch import EncodedTable
from mtlkit.errors import ConfigError
from mtlkit.metrics.functions import METRICS, Metric
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.kinds._common import corruptible_tokens


class TokenFrequencyHead(NLPHead):
    """One value per token: its standardised log corpus frequency."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.regressor = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.regressor(sequence).squeeze(-1)  # (B, L)


def _rmse(sums, labels=None, groups=None) -> float:
    total = sums.reshape(-1, 2).sum(0)
    return float(math.sqrt(total[0] / total[1])) if total[1] > 0 else float("nan")


if "frequency_rmse" not in METRICS:
    METRICS.register("frequency_rmse")(Metric("frequency_rmse", _rmse, False, ("token_frequency",)))


@NLP_KINDS.register("token_frequency")
class TokenFrequencyTask(NLPTask):
    kind: ClassVar[str] = "token_frequency"
    default_metrics: ClassVar[list[str]] = ["frequency_rmse"]
    supported_metrics: ClassVar[list[str]] = ["frequency_rmse"]
    token_level: ClassVar[bool] = True
    auxiliary: ClassVar[bool] = True

    smoothing: float = Field(default=1.0, gt=0.0)  # α of the add-α estimate
    _table: Tensor | None = PrivateAttr(default=None)

    def fit(self, train_examples: Sequence[Any], tokenizer: Any) -> None:
        """Count the word pieces of the training texts (and pairs) only; the table every split's targets read."""
        if not train_examples:
            raise ConfigError(f"task {self.name!r}: kind token_frequency counts the training split only, and data.train "
                              "gives it no rows (a frequency from validation or test text would leak)")
        texts = [t for e in train_examples for t in (e.text, getattr(e, "text_pair", None)) if t]
        # One count over all word pieces (a bincount per text would allocate a vocabulary-sized tensor each).
        ids = torch.tensor(list(itertools.chain.from_iterable(tokenizer(texts, add_special_tokens=False)["input_ids"])), dtype=torch.long)
        self.set_table(torch.bincount(ids, minlength=len(tokenizer)).double()[: len(tokenizer)])

    def set_table(self, counts: Tensor) -> None:
        """The standardised add-α log relative frequency per token id from raw ``counts``."""
        counts = counts.double()
        log_frequency = torch.log((counts + self.smoothing) / (counts.sum() + self.smoothing * len(counts)))
        seen = counts > 0
        occurrences = counts[seen] if seen.any() else torch.ones(1, dtype=torch.float64)
        values = log_frequency[seen] if seen.any() else log_frequency[:1]
        mean = float((occurrences * values).sum() / occurrences.sum())
        std = math.sqrt(float((occurrences * (values - mean) ** 2).sum() / occurrences.sum())) or 1.0
        self._table = ((log_frequency - mean) / std).float()

    @property
    def table(self) -> Tensor:
        if self._table is None:
            raise RuntimeError(f"task {self.name!r}: fit (the training split) must run before featurize")
        return self._table

    def featurize(self, examples: Sequence[Any], tokenizer: Any) -> EncodedTable:
        table = self.table
        inputs, eligible = corruptible_tokens(examples, tokenizer, self.max_length, self.name)
        ids = inputs["input_ids"].clamp(0, len(table) - 1)
        target = torch.where(eligible, table[ids], torch.full(ids.shape, math.nan))
        return EncodedTable(inputs, {self.name: target}, {self.name: eligible.any(1)})

    def build_head(self, hidden_size: int) -> NLPHead:
        return TokenFrequencyHead(hidden_size)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        target = target[:, : outputs.shape[1]]
        valid = ~torch.isnan(target)
        errors = (outputs.float() - torch.nan_to_num(target.float())) ** 2
        w = torch.ones(target.shape[0], device=outputs.device) if weight is None else weight.float()
        if mask is not None:
            w = w * mask.float()
        w = w[:, None] * valid.float()
        return (w * errors).sum() / w.sum().clamp_min(1e-12)  # exactly 0 when no row counts

    def eval_outputs(self, outputs: Tensor, batch: Any) -> Tensor:
        """``(B, 2)``: per row the squared-error sum over real tokens and their number."""
        target = batch.targets[self.name][:, : outputs.shape[1]]
        valid = ~torch.isnan(target)
        errors = torch.where(valid, (outputs.float() - torch.nan_to_num(target.float())) ** 2, 0.0)
        return torch.stack([errors.sum(1), valid.sum(1).float()], dim=1)

    def evaluate(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> dict[str, float]:
        keep = table.masks[self.name].numpy()
        sums = outputs.float().numpy()[keep]
        return {name: METRICS.get(name)(sums, None) for name in self.metrics or self.default_metrics}

    def predict_records(self, outputs: Any, table: EncodedTable, examples: Sequence[Any]) -> list[dict[str, Any]]:
        raise ConfigError(f"task {self.name!r} is a token-frequency auxiliary objective: it has no predictions to write")


__all__ = ["TokenFrequencyHead", "TokenFrequencyTask"]
