"""Helpers shared by the span-level kinds (tagging, span QA, span NER, relation).

- :func:`masked_mean`: the loss reduction every kind uses — a weighted mean over the elements
  that count (labelled tokens of kept rows), exactly 0 when none do.
- :func:`stack_outputs`: head outputs gathered over a split, given as one tensor or as one
  tensor per batch whose sequence length differs (the model trims padding per batch); padded
  with zeros along dim 1, positions no decoder reads.

Example:
    >>> import torch
    >>> loss = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    >>> valid = torch.tensor([[True, True], [True, False]])
    >>> masked_mean(loss, valid, weight=torch.tensor([1.0, 2.0])).item()   # (1 + 3 + 2·5) / 4
    3.5
    >>> masked_mean(loss, valid, mask=torch.tensor([False, False])).item()
    0.0
    >>> stack_outputs([torch.ones(1, 3), torch.ones(2, 1)]).tolist()
    [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.nlp.examples import texts_of
from mtlkit.nlp.featurize import tokenize
from mtlkit.nn.mlp import MLP

IGNORE = -100  # the label of positions that carry no supervision (cross_entropy's ignore_index)


def require_fast(tokenizer: Any, task: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"task {task!r}: needs a fast (Rust-backed) tokenizer for word ids and offsets, "
                          f"got {type(tokenizer).__name__}")
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ConfigError(f"task {task!r}: needs a tokenizer that pads on the right (position 0 is the null answer)")


def corruptible_tokens(examples: Sequence[Any], tokenizer: Any, max_length: int, task: str) -> tuple[dict[str, Tensor], Tensor]:
    """The tokenized texts (and pairs) of ``examples`` — any reader's records, see
    :func:`~mtlkit.nlp.examples.texts_of` — and which positions a self-supervised task may corrupt:
    real tokens, not padding nor special tokens (masked LM, replaced-token detection)."""
    try:
        texts = [texts_of(e) for e in examples]
    except TypeError as error:
        raise ConfigError(f"task {task!r}: its data holds no text to corrupt ({error})") from None
    sources = [e.source for e in examples]
    inputs = tokenize(tokenizer, [t for t, _ in texts], [p for _, p in texts], max_length, sources, mixed=True)
    ids = inputs["input_ids"]
    special = torch.isin(ids, torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=ids.dtype))
    return inputs, inputs["attention_mask"].bool() & ~special


def model_inputs(encoding: Any) -> dict[str, Tensor]:
    """``input_ids``, ``attention_mask`` (and ``token_type_ids`` when made) as ``(N, L)`` long tensors."""
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
    return {k: torch.tensor(encoding[k], dtype=torch.long) for k in keys}


def masked_mean(values: Tensor, valid: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over ``valid`` elements, each weighted by its row's ``weight``, rows in ``mask``."""
    w = valid.to(values.dtype)
    shape = (-1,) + (1,) * (values.dim() - 1)
    if weight is not None:
        w = w * weight.to(values.dtype).reshape(shape)
    if mask is not None:
        w = w * mask.to(values.dtype).reshape(shape)
    # where(): an ignored position may hold inf (e.g. a masked logit); 0·inf would be NaN.
    return (torch.where(w > 0, values, torch.zeros_like(values)) * w).sum() / w.sum().clamp_min(1e-12)


def token_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-position cross-entropy of ``(B, L, C)`` logits, 0 where ``target`` is :data:`IGNORE`."""
    return F.cross_entropy(logits.transpose(1, 2).float(), target, ignore_index=IGNORE, reduction="none")


def trim(target: Tensor, length: int) -> Tensor:
    """Targets featurized at ``max_length`` cut to the batch's trimmed sequence length."""
    return target[:, :length]


def stack_outputs(outputs: Tensor | Sequence[Tensor]) -> Tensor:
    """One tensor from per-batch outputs whose dim 1 may differ (zeros fill the gap)."""
    if isinstance(outputs, Tensor):
        return outputs
    parts = list(outputs)
    if not parts:
        raise ValueError("no outputs to evaluate")
    if parts[0].dim() < 2:
        return torch.cat(parts)
    length = max(p.shape[1] for p in parts)
    return torch.cat([F.pad(p, (0, 0) * (p.dim() - 2) + (0, length - p.shape[1])) for p in parts])


def fit_length(values: Tensor, length: int) -> Tensor:
    """Cut or zero-pad dim 1 of ``values`` to ``length`` (outputs vs featurized extras)."""
    if values.shape[1] >= length:
        return values[:, :length]
    return F.pad(values, (0, 0) * (values.dim() - 2) + (0, length - values.shape[1]))


def head_layers(input_dim: int, hidden: Sequence[int], dropout: float, outputs: int) -> nn.Sequential:
    """Dropout → optional MLP (``head.hidden``) → linear layer to ``outputs``."""
    mlp = MLP(input_dim, list(hidden), activation="gelu", dropout=dropout)
    return nn.Sequential(nn.Dropout(dropout), mlp, nn.Linear(mlp.output_dim, outputs))


__all__ = [
    "IGNORE",
    "fit_length",
    "head_layers",
    "masked_mean",
    "model_inputs",
    "require_fast",
    "stack_outputs",
    "token_cross_entropy",
    "trim",
]
