"""Masked-LM as an auxiliary loss on the task texts (BERT's pre-training objective, kept on).

Devlin et al. (NAACL 2019, §3.1, "Task #1: Masked LM"): choose ``probability`` (15 %) of the
real word pieces; of those, 80 % become ``[MASK]``, 10 % a random token and 10 % stay as they are;
predict the original token at every chosen position (cross-entropy, mean over chosen tokens).
Used as an auxiliary task on the texts of other tasks (``data: {from_tasks: [...]}``) it keeps
the encoder close to its language model while the heads specialise (cf. the LM auxiliary of
Rei 2017 and BERT-style domain adaptation).

Determinism: masking is drawn per batch, not per epoch, in :meth:`MaskedLMTask.transform_batch`
with a generator the sampler seeds from ``(seed, epoch, step, position in step)``
(:func:`mtlkit.nlp.sampling.step_generator`). A run resumed at step ``s`` of epoch ``e`` therefore
masks exactly as the uninterrupted run did, without saving any RNG state; validation masks with
a fixed seed, so perplexities of different epochs compare the same masked tokens.

The head (BERT's ``cls.predictions``: dense → GELU → LayerNorm → decoder) ties its decoder
to the encoder's input embeddings when they are an ``nn.Embedding`` of the hidden width (the
model calls ``bind_encoder``); only the chosen positions are decoded, so the ``(B, L, V)``
logits are never built. Metric: ``perplexity`` = exp(mean NLL of the chosen tokens).

Example:
    >>> import torch
    >>> from mtlkit.data.batch import Batch
    >>> task = MaskedLMTask(name="mlm", probability=0.5)
    >>> task.set_vocabulary(mask_token_id=4, vocab_size=10)
    >>> ids = torch.tensor([[2, 5, 6, 7, 8, 3, 0]])            # [CLS] … [SEP] [PAD]
    >>> original = torch.tensor([[-100, 5, 6, 7, 8, -100, -100]])
    >>> batch = Batch({"input_ids": ids, "tok:mlm_positions": torch.zeros_like(ids, dtype=torch.bool)},
    ...               {"mlm": original}, {"mlm": torch.tensor([True])})
    >>> masked = task.transform_batch(batch, torch.Generator().manual_seed(0))
    >>> chosen = masked.inputs["tok:mlm_positions"]
    >>> bool(chosen[0, [0, 5, 6]].any())                         # specials and padding never chosen
    False
    >>> bool((masked.targets["mlm"][chosen] == original[chosen]).all())
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, PrivateAttr, model_validator
from torch import Tensor, nn

from mtlkit.data.batch import Batch, EncodedTable
from mtlkit.errors import ConfigError
from mtlkit.metrics import METRICS
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.kinds._common import corruptible_tokens

IGNORE = -100  # label of positions that are not predicted
POSITIONS = "tok:mlm_positions"  # (B, L) bool input: the chosen positions (a "tok:" input is trimmed with the text)


class MaskedLMHead(NLPHead):
    """BERT's prediction head; decodes only the positions in ``inputs["tok:mlm_positions"]``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size))
        self.hidden_size = hidden_size
        self.decoder: nn.Linear | None = None
        self.bias: nn.Parameter | None = None
        self._tied: list[nn.Embedding] = []  # a plain list: the embedding stays registered under the encoder only

    def bind_encoder(self, encoder: nn.Module) -> None:
        """Tie the decoder to ``encoder``'s input embeddings (or make an untied one of the vocabulary size)."""
        hf_model: Any = encoder  # a Hugging Face model (get_input_embeddings, config), typed nn.Module by the head interface
        embedding = hf_model.get_input_embeddings()
        if isinstance(embedding, nn.Embedding) and embedding.embedding_dim == self.hidden_size:
            self._tied = [embedding]
            vocab = embedding.num_embeddings
        else:
            vocab = int(hf_model.config.vocab_size)
            self.decoder = nn.Linear(self.hidden_size, vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab))

    @property
    def tied(self) -> bool:
        return bool(self._tied)

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        if self.bias is None:
            raise RuntimeError("MaskedLMHead.bind_encoder(encoder) must be called before use")
        chosen = inputs[POSITIONS][:, : sequence.shape[1]]
        weight = self._tied[0].weight if self._tied else self.decoder.weight  # type: ignore[union-attr]
        return F.linear(self.transform(sequence[chosen]), weight, self.bias)  # (n_chosen, V)


@NLP_KINDS.register("mlm")
class MaskedLMTask(NLPTask):
    kind: ClassVar[str] = "mlm"
    default_metrics: ClassVar[list[str]] = ["perplexity"]
    supported_metrics: ClassVar[list[str]] = ["perplexity"]
    token_level: ClassVar[bool] = True
    auxiliary: ClassVar[bool] = True

    probability: float = Field(default=0.15, gt=0.0, le=1.0)
    mask_share: float = Field(default=0.8, ge=0.0, le=1.0)
    random_share: float = Field(default=0.1, ge=0.0, le=1.0)
    _vocabulary: tuple[int, int] | None = PrivateAttr(default=None)  # (mask token id, vocabulary size)

    @model_validator(mode="after")
    def _shares(self) -> MaskedLMTask:
        if self.mask_share + self.random_share > 1.0:
            raise ValueError("mask_share + random_share must be at most 1 (the rest stay unchanged)")
        return self

    def set_vocabulary(self, mask_token_id: int, vocab_size: int) -> None:
        self._vocabulary = (int(mask_token_id), int(vocab_size))

    def featurize(self, examples: Sequence[Any], tokenizer: Any) -> EncodedTable:
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"task {self.name!r}: the tokenizer has no mask token, so masked-LM cannot run")
        self.set_vocabulary(tokenizer.mask_token_id, len(tokenizer))
        inputs, eligible = corruptible_tokens(examples, tokenizer, self.max_length, self.name)
        ids = inputs["input_ids"]
        inputs[POSITIONS] = torch.zeros_like(eligible)
        target = ids.where(eligible, torch.full_like(ids, IGNORE))
        return EncodedTable(inputs, {self.name: target}, {self.name: eligible.any(1)})

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.name not in batch.targets:
            return batch
        if self._vocabulary is None:
            raise RuntimeError(f"task {self.name!r}: featurize (or set_vocabulary) must run before masking")
        mask_id, vocab = self._vocabulary
        ids, original = batch.inputs["input_ids"], batch.targets[self.name]
        eligible = original != IGNORE
        chosen = (torch.rand(ids.shape, generator=generator) < self.probability) & eligible
        u = torch.rand(ids.shape, generator=generator)
        to_mask = chosen & (u < self.mask_share)
        to_random = chosen & (u >= self.mask_share) & (u < self.mask_share + self.random_share)
        random_ids = torch.randint(vocab, ids.shape, generator=generator, dtype=ids.dtype)
        new_ids = torch.where(to_mask, torch.full_like(ids, mask_id), torch.where(to_random, random_ids, ids))
        labels = original.where(chosen, torch.full_like(original, IGNORE))
        inputs = {**batch.inputs, "input_ids": new_ids, POSITIONS: chosen}
        return Batch(inputs, {**batch.targets, self.name: labels}, batch.masks, batch.weights)

    def build_head(self, hidden_size: int) -> NLPHead:
        return MaskedLMHead(hidden_size)

    def _token_losses(self, outputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per chosen token: its NLL and its row (``outputs`` holds the chosen positions in row-major order)."""
        chosen = target != IGNORE
        rows = chosen.nonzero()[:, 0]
        labels = target[chosen]
        return F.cross_entropy(outputs.float(), labels, reduction="none"), rows

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        nll, rows = self._token_losses(outputs, target)
        w = torch.ones(target.shape[0], device=nll.device) if weight is None else weight.float()
        if mask is not None:
            w = w * mask.float()
        w = w[rows]
        return (w * nll).sum() / w.sum().clamp_min(1e-12)  # exactly 0 when no token is chosen

    def eval_outputs(self, outputs: Tensor, batch: Batch) -> Tensor:
        """``(B, 2)``: per row the NLL sum and the number of chosen tokens (not the ``(n, V)`` logits)."""
        target = batch.targets[self.name]
        nll, rows = self._token_losses(outputs, target)
        sums = torch.zeros(target.shape[0], 2, device=nll.device)
        sums[:, 0].index_add_(0, rows, nll.detach())
        sums[:, 1].index_add_(0, rows, torch.ones_like(nll))
        return sums

    def evaluate(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> dict[str, float]:
        keep = table.masks[self.name].numpy()
        sums = outputs.float().numpy()[keep]
        return {name: METRICS.get(name)(sums, None) for name in self.metrics or self.default_metrics}

    def predict_records(self, outputs: Any, table: EncodedTable, examples: Sequence[Any]) -> list[dict[str, Any]]:
        raise ConfigError(f"task {self.name!r} is a masked-LM auxiliary objective: it has no predictions to write")


__all__ = ["IGNORE", "MaskedLMHead", "MaskedLMTask", "POSITIONS"]
