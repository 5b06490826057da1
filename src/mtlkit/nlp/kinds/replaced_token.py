"""Replaced-token detection as an auxiliary loss on the task texts (ELECTRA's discriminator objective).

Clark et al. (ICLR 2020, §2, Eq. 2): corrupt a share ``probability`` (15 %) of the real word
pieces and train a per-token classifier ``D(x̃, t) = σ(wᵀ h_t)`` to tell replaced tokens from
original ones, ``L = mean_t BCE(D(x̃, t), [x̃_t ≠ x_t])`` over every real token (not only the
corrupted ones: the signal ELECTRA credits for its sample efficiency). Here the corruption is a
token drawn uniformly from the vocabulary ("corruption by a sampled token"), not a jointly trained
MLM generator: the discriminator's task is then easier than ELECTRA's, and cheaper — the
"is this word in the right place?" auxiliary of the checklist. A draw equal to the original
token counts as original, as in the paper.

Masking is drawn per batch with the sampler's step generator, exactly as :mod:`~mtlkit.nlp.kinds.mlm`
does, so resumed runs corrupt the same tokens and validation uses a fixed seed. Metric:
``replaced_token_accuracy`` (per-token accuracy of the discriminator on the real tokens).

Example:
    >>> import torch
    >>> from mtlkit.data.batch import Batch
    >>> task = ReplacedTokenTask(name="rtd", probability=0.5)
    >>> task.set_vocabulary(vocab_size=50)
    >>> ids = torch.tensor([[2, 5, 6, 7, 8, 3, 0]])            # [CLS] … [SEP] [PAD]
    >>> eligible = torch.tensor([[-100, 0, 0, 0, 0, -100, -100]])
    >>> out = task.transform_batch(Batch({"input_ids": ids}, {"rtd": eligible}, {"rtd": torch.tensor([True])}),
    ...                            torch.Generator().manual_seed(0))
    >>> labels = out.targets["rtd"]
    >>> bool((labels[0, [0, 5, 6]] == -100).all()), bool(((out.inputs["input_ids"] != ids) == (labels == 1)).all())
    (True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, PrivateAttr
from torch import Tensor, nn

from mtlkit.data.batch import Batch, EncodedTable
from mtlkit.errors import ConfigError
from mtlkit.metrics.functions import METRICS, Metric
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.kinds._common import corruptible_tokens

IGNORE = -100


class ReplacedTokenHead(NLPHead):
    """One logit per token: was it replaced?"""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.classifier(sequence).squeeze(-1)  # (B, L)


def _accuracy(sums, labels=None, groups=None) -> float:
    total = sums.reshape(-1, 2).sum(0)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


if "replaced_token_accuracy" not in METRICS:
    METRICS.register("replaced_token_accuracy")(Metric("replaced_token_accuracy", _accuracy, True, ("replaced_token",)))


@NLP_KINDS.register("replaced_token")
class ReplacedTokenTask(NLPTask):
    kind: ClassVar[str] = "replaced_token"
    default_metrics: ClassVar[list[str]] = ["replaced_token_accuracy"]
    supported_metrics: ClassVar[list[str]] = ["replaced_token_accuracy"]
    token_level: ClassVar[bool] = True
    auxiliary: ClassVar[bool] = True

    probability: float = Field(default=0.15, gt=0.0, lt=1.0)
    _vocab_size: int | None = PrivateAttr(default=None)

    def set_vocabulary(self, vocab_size: int) -> None:
        self._vocab_size = int(vocab_size)

    def featurize(self, examples: Sequence[Any], tokenizer: Any) -> EncodedTable:
        self.set_vocabulary(len(tokenizer))
        inputs, eligible = corruptible_tokens(examples, tokenizer, self.max_length)
        ids = inputs["input_ids"]
        target = torch.where(eligible, torch.zeros_like(ids), torch.full_like(ids, IGNORE))
        return EncodedTable(inputs, {self.name: target}, {self.name: eligible.any(1)})

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.name not in batch.targets:
            return batch
        if self._vocab_size is None:
            raise RuntimeError(f"task {self.name!r}: featurize (or set_vocabulary) must run before corrupting")
        ids, target = batch.inputs["input_ids"], batch.targets[self.name]
        eligible = target != IGNORE
        chosen = (torch.rand(ids.shape, generator=generator) < self.probability) & eligible
        drawn = torch.randint(self._vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
        corrupted = torch.where(chosen, drawn, ids)
        labels = torch.where(eligible, (corrupted != ids).to(target.dtype), torch.full_like(target, IGNORE))
        return Batch({**batch.inputs, "input_ids": corrupted}, {**batch.targets, self.name: labels}, batch.masks, batch.weights)

    def build_head(self, hidden_size: int) -> NLPHead:
        return ReplacedTokenHead(hidden_size)

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        target = target[:, : outputs.shape[1]]
        valid = target != IGNORE
        losses = F.binary_cross_entropy_with_logits(outputs.float(), target.clamp(min=0).float(), reduction="none")
        w = torch.ones(target.shape[0], device=outputs.device) if weight is None else weight.float()
        if mask is not None:
            w = w * mask.float()
        w = w[:, None] * valid.float()
        return (w * losses).sum() / w.sum().clamp_min(1e-12)  # exactly 0 when no row counts

    def eval_outputs(self, outputs: Tensor, batch: Batch) -> Tensor:
        """``(B, 2)``: per row the correctly classified real tokens and their number."""
        target = batch.targets[self.name][:, : outputs.shape[1]]
        valid = target != IGNORE
        correct = ((outputs > 0).long() == target) & valid
        return torch.stack([correct.sum(1), valid.sum(1)], dim=1).float()

    def evaluate(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> dict[str, float]:
        keep = table.masks[self.name].numpy()
        sums = outputs.float().numpy()[keep]
        return {name: METRICS.get(name)(sums, None) for name in self.metrics or self.default_metrics}

    def predict_records(self, outputs: Any, table: EncodedTable, examples: Sequence[Any]) -> list[dict[str, Any]]:
        raise ConfigError(f"task {self.name!r} is a replaced-token-detection auxiliary objective: it has no predictions to write")


__all__ = ["ReplacedTokenHead", "ReplacedTokenTask"]
