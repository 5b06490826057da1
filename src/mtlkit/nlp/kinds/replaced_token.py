"""Replaced-token detection as an auxiliary loss on the task texts (ELECTRA's discriminator objective).

Clark et al. (ICLR 2020, §2, Eq. 2): corrupt a share ``probability`` (15 %) of the real word
pieces and train a per-token classifier ``D(x̃, t) = σ(wᵀ h_t)`` to tell replaced tokens from
original ones, ``L = mean_t BCE(D(x̃, t), [x̃_t ≠ x_t])`` over every real token (not only the
corrupted ones: the signal ELECTRA credits for its sample efficiency). A draw equal to the
original token counts as original, as in the paper. Two corruptions:

- ``corruption: uniform`` (default): a token drawn uniformly from the vocabulary — the
  discriminator's task is easier than ELECTRA's, and cheaper: the "is this word in the right
  place?" auxiliary of the checklist.
- ``corruption: generator``: ELECTRA itself. A small MLM generator
  (:class:`~mtlkit.nlp.electra.ElectraGenerator`: tied token embeddings, ``generator_width``,
  ``generator_layers``) reads the text with the chosen tokens ``[MASK]``-ed, a replacement is
  sampled from its softmax (no gradient through the sample), the shared encoder reads the
  corrupted text, and the task's loss is ``L_MLM + λ · L_Disc`` with λ = ``discriminator_weight``
  (50 in the paper). The balancer sees that sum as this task's one loss; metrics add
  ``generator_perplexity``.

Masking (and, for the generator, one uniform per position for the inverse-CDF sample) is drawn
per batch with the sampler's step generator, exactly as :mod:`~mtlkit.nlp.kinds.mlm`
does, so resumed runs corrupt the same tokens and validation uses a fixed seed (with the
generator, validation's positions and uniforms are fixed; its samples follow the generator as it
trains, as ELECTRA's discriminator task hardens). Metric:
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

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PrivateAttr, model_validator
from torch import Tensor, nn

from mtlkit.data.batch import Batch, EncodedTable
from mtlkit.errors import ConfigError
from mtlkit.metrics.functions import METRICS, Metric
from mtlkit.nlp.base import NLP_KINDS, NLPHead, NLPTask
from mtlkit.nlp.electra import ElectraGenerator, sample_inverse_cdf
from mtlkit.nlp.kinds._common import corruptible_tokens

IGNORE = -100
# Generator corruption: inputs drawn by transform_batch ("tok:" inputs are trimmed with the text) ...
CHOSEN = "tok:rtd_chosen"  # (B, L) bool: the positions the generator fills
UNIFORM = "tok:rtd_uniform"  # (B, L) float: the uniform of each position's inverse-CDF sample
MASKED_IDS = "tok:rtd_masked_ids"  # (B, L): input_ids with the chosen positions [MASK]-ed (the generator's input)
# ... and what the head's rewrite_inputs adds for its forward.
GENERATOR_NLL = "tok:rtd_generator_nll"  # (B, L): the generator's NLL of the original token at chosen positions
REPLACED = "tok:rtd_replaced"  # (B, L) bool: the corrupted token differs from the original
GENERATOR_KEYS = ("generator_width", "generator_layers", "generator_heads", "discriminator_weight")


class ReplacedTokenHead(NLPHead):
    """One logit per token: was it replaced?"""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.classifier(sequence).squeeze(-1)  # (B, L)


class GeneratorReplacedTokenHead(ReplacedTokenHead):
    """ELECTRA: the generator corrupts the inputs (``rewrite_inputs``), the discriminator scores each token.

    Output ``(B, L, 4)``: ``[..., 0]`` the discriminator's logit, ``[..., 1]`` 1 where the token was
    replaced, ``[..., 2]`` 1 where the generator filled it, ``[..., 3]`` the generator's NLL of the
    original token there (ELECTRA's L_MLM term; 0 elsewhere) — one tensor, as the trainer expects,
    and never the ``(B, L, V)`` logits.
    """

    rewrites_inputs = True

    def __init__(self, hidden_size: int, width: int | None, layers: int, heads: int, max_positions: int) -> None:
        super().__init__(hidden_size)
        self.options = (width, layers, heads, max_positions)
        self.generator: ElectraGenerator | None = None
        self._embedding: list[nn.Embedding] = []  # the encoder's table, tied (registered under the encoder only)

    def bind_encoder(self, encoder: nn.Module) -> None:
        hf_model: Any = encoder
        embedding = hf_model.get_input_embeddings()
        if not isinstance(embedding, nn.Embedding):
            raise ConfigError("corruption: generator ties the generator to the encoder's input embeddings, "
                              f"but this encoder's are a {type(embedding).__name__}, not an nn.Embedding")
        width, layers, heads, max_positions = self.options
        hidden = int(hf_model.config.hidden_size)
        width = width if width is not None else max(heads, (max(16, hidden // 4) // heads) * heads)  # ELECTRA: 1/4 of D
        self._embedding = [embedding]
        self.generator = ElectraGenerator(embedding.embedding_dim, width, layers, heads, max_positions, embedding.num_embeddings)

    def rewrite_inputs(self, inputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        if self.generator is None:
            raise RuntimeError("GeneratorReplacedTokenHead.bind_encoder(encoder) must be called before use")
        ids, chosen = inputs["input_ids"], inputs[CHOSEN]
        logits = self.generator(self._embedding[0], inputs[MASKED_IDS], inputs["attention_mask"], chosen)
        sampled = sample_inverse_cdf(logits.detach(), inputs[UNIFORM][chosen])  # no gradient through the sample
        corrupted = ids.masked_scatter(chosen, sampled.to(ids.dtype))
        nll = torch.zeros(ids.shape, device=logits.device).masked_scatter(chosen, F.cross_entropy(logits.float(), ids[chosen], reduction="none"))
        return {**inputs, "input_ids": corrupted, GENERATOR_NLL: nll, REPLACED: corrupted != ids}

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        length = sequence.shape[1]
        parts = [self.classifier(sequence).squeeze(-1), inputs[REPLACED][:, :length], inputs[CHOSEN][:, :length], inputs[GENERATOR_NLL][:, :length]]
        return torch.stack([p.float() for p in parts], dim=-1)


def _accuracy(sums, labels=None, groups=None) -> float:
    total = sums.reshape(-1, 2).sum(0)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def _generator_perplexity(sums, labels=None, groups=None) -> float:
    total = sums.reshape(-1, 2).sum(0)
    return float(math.exp(total[0] / total[1])) if total[1] > 0 else float("nan")


if "replaced_token_accuracy" not in METRICS:
    METRICS.register("replaced_token_accuracy")(Metric("replaced_token_accuracy", _accuracy, True, ("replaced_token",)))
if "generator_perplexity" not in METRICS:
    METRICS.register("generator_perplexity")(Metric("generator_perplexity", _generator_perplexity, False, ("replaced_token",)))


@NLP_KINDS.register("replaced_token")
class ReplacedTokenTask(NLPTask):
    kind: ClassVar[str] = "replaced_token"
    default_metrics: ClassVar[list[str]] = ["replaced_token_accuracy"]
    supported_metrics: ClassVar[list[str]] = ["replaced_token_accuracy", "generator_perplexity"]
    token_level: ClassVar[bool] = True
    auxiliary: ClassVar[bool] = True

    probability: float = Field(default=0.15, gt=0.0, lt=1.0)
    corruption: Literal["uniform", "generator"] = "uniform"
    generator_width: int | None = Field(default=None, ge=1)  # None: a quarter of the encoder's hidden size (ELECTRA §3.2)
    generator_layers: int = Field(default=1, ge=1)
    generator_heads: int = Field(default=1, ge=1)
    discriminator_weight: float = Field(default=50.0, ge=0.0)  # λ of L_MLM + λ L_Disc
    _vocab_size: int | None = PrivateAttr(default=None)
    _mask_token_id: int | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> ReplacedTokenTask:
        if self.corruption == "uniform":
            given = [k for k in GENERATOR_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(f"{given[0]} applies to corruption: generator (ELECTRA's MLM generator), not uniform")
            if self.metrics is not None and "generator_perplexity" in self.metrics:
                raise ValueError("metrics: generator_perplexity needs corruption: generator")
        if self.generator_width is not None and self.generator_width % self.generator_heads:
            raise ValueError(f"generator_width ({self.generator_width}) must be a multiple of generator_heads ({self.generator_heads})")
        return self

    def metrics_by_default(self) -> list[str]:
        return ["replaced_token_accuracy", "generator_perplexity"] if self.corruption == "generator" else ["replaced_token_accuracy"]

    def set_vocabulary(self, vocab_size: int, mask_token_id: int | None = None) -> None:
        self._vocab_size = int(vocab_size)
        self._mask_token_id = mask_token_id

    def featurize(self, examples: Sequence[Any], tokenizer: Any) -> EncodedTable:
        if self.corruption == "generator" and tokenizer.mask_token_id is None:
            raise ConfigError(f"task {self.name!r}: corruption: generator needs a tokenizer with a mask token")
        self.set_vocabulary(len(tokenizer), tokenizer.mask_token_id)
        inputs, eligible = corruptible_tokens(examples, tokenizer, self.max_length, self.name)
        ids = inputs["input_ids"]
        # uniform: 0 (not replaced yet); generator: the original token, the generator's MLM label
        target = torch.where(eligible, ids if self.corruption == "generator" else torch.zeros_like(ids), torch.full_like(ids, IGNORE))
        if self.corruption == "generator":
            inputs.update({CHOSEN: torch.zeros_like(eligible), UNIFORM: torch.zeros(ids.shape), MASKED_IDS: ids.clone()})
        return EncodedTable(inputs, {self.name: target}, {self.name: eligible.any(1)})

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.name not in batch.targets:
            return batch
        if self._vocab_size is None:
            raise RuntimeError(f"task {self.name!r}: featurize (or set_vocabulary) must run before corrupting")
        ids, target = batch.inputs["input_ids"], batch.targets[self.name]
        eligible = target != IGNORE
        chosen = (torch.rand(ids.shape, generator=generator) < self.probability) & eligible
        if self.corruption == "generator":  # the model samples the replacements (GeneratorReplacedTokenHead)
            if self._mask_token_id is None:
                raise RuntimeError(f"task {self.name!r}: featurize (or set_vocabulary with a mask token) must run before corrupting")
            uniform = torch.rand(ids.shape, generator=generator)
            masked = torch.where(chosen, torch.full_like(ids, self._mask_token_id), ids)
            return Batch({**batch.inputs, CHOSEN: chosen, UNIFORM: uniform, MASKED_IDS: masked}, batch.targets, batch.masks, batch.weights)
        drawn = torch.randint(self._vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
        corrupted = torch.where(chosen, drawn, ids)
        labels = torch.where(eligible, (corrupted != ids).to(target.dtype), torch.full_like(target, IGNORE))
        return Batch({**batch.inputs, "input_ids": corrupted}, {**batch.targets, self.name: labels}, batch.masks, batch.weights)

    def build_head(self, hidden_size: int) -> NLPHead:
        if self.corruption == "generator":
            return GeneratorReplacedTokenHead(hidden_size, self.generator_width, self.generator_layers, self.generator_heads, self.max_length)
        return ReplacedTokenHead(hidden_size)

    @staticmethod
    def _row_weights(n: int, device: torch.device, weight: Tensor | None, mask: Tensor | None) -> Tensor:
        w = torch.ones(n, device=device) if weight is None else weight.float()
        return w * mask.float() if mask is not None else w

    def _parts(self, outputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Discriminator logits ``(B, L)``, its 0/1 labels (IGNORE off the real tokens), and the real-token mask."""
        target = target[:, : outputs.shape[1]]
        valid = target != IGNORE
        if outputs.dim() == 3:  # generator corruption: (B, L, 4)
            return outputs[..., 0], torch.where(valid, outputs[..., 1].long(), IGNORE), valid
        return outputs, target, valid

    def compute_loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Mean BCE of the discriminator over real tokens; with the generator ``L_MLM + λ · L_Disc``."""
        logits, labels, valid = self._parts(outputs, target)
        losses = F.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0).float(), reduction="none")
        rows = self._row_weights(target.shape[0], logits.device, weight, mask)
        w = rows[:, None] * valid.float()
        discriminator = (w * losses).sum() / w.sum().clamp_min(1e-12)  # exactly 0 when no row counts
        if outputs.dim() != 3:
            return discriminator
        chosen = rows[:, None] * outputs[..., 2].float()
        mlm = (chosen * outputs[..., 3].float()).sum() / chosen.sum().clamp_min(1e-12)
        return mlm + self.discriminator_weight * discriminator

    def eval_outputs(self, outputs: Tensor, batch: Batch) -> Tensor:
        """``(B, 2)``: per row the correctly classified real tokens and their number; with the generator
        ``(B, 4)``: then its NLL sum over the chosen tokens and their number."""
        logits, labels, valid = self._parts(outputs, batch.targets[self.name])
        correct = ((logits > 0).long() == labels) & valid
        sums = torch.stack([correct.sum(1), valid.sum(1)], dim=1).float()
        if outputs.dim() != 3:
            return sums
        return torch.cat([sums, (outputs[..., 3] * outputs[..., 2]).sum(1, keepdim=True).float(), outputs[..., 2].sum(1, keepdim=True).float()], dim=1)

    def evaluate(self, outputs: Tensor, table: EncodedTable, examples: Sequence[Any]) -> dict[str, float]:
        keep = table.masks[self.name].numpy()
        sums = outputs.float().numpy()[keep]
        columns = {"replaced_token_accuracy": sums[:, :2], "generator_perplexity": sums[:, 2:4]}
        return {name: METRICS.get(name)(columns[name], None) for name in self.metrics or self.metrics_by_default()}

    def predict_records(self, outputs: Any, table: EncodedTable, examples: Sequence[Any]) -> list[dict[str, Any]]:
        raise ConfigError(f"task {self.name!r} is a replaced-token-detection auxiliary objective: it has no predictions to write")


__all__ = ["GeneratorReplacedTokenHead", "ReplacedTokenHead", "ReplacedTokenTask"]
