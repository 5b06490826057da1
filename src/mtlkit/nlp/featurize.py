"""Tokenise texts (or text pairs) into the padded tensors every sequence-level kind feeds the encoder.

Rows are truncated to ``max_length`` word pieces (pairs: the longer text first, the tokenizer's
``longest_first``) and padded to the longest row of the split; the model trims each batch again
to its own longest row. Example (``tokenizer`` is any transformers tokenizer):

    inputs = tokenize(tokenizer, ["a cat sat"], ["on a mat"], max_length=16)
    inputs["input_ids"].shape      # (1, L) with L <= 16; also attention_mask, token_type_ids
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import DataError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str | None] | None, max_length: int,
             sources: Sequence[str] = (), mixed: bool = False) -> dict[str, Tensor]:
    """``{input_ids, attention_mask[, token_type_ids]}`` of shape ``(N, L)``, ``L ≤ max_length``.

    Rows either all have a second text or none does; ``mixed=True`` (texts pooled from several
    tasks, e.g. masked-LM or a domain classifier) allows both in one table.
    """
    if pairs is not None:
        missing = [i for i, p in enumerate(pairs) if p is None]
        if missing and len(missing) < len(pairs):
            if mixed:
                return _tokenize_mixed(tokenizer, texts, pairs, max_length)
            where = sources[missing[0]] if sources else f"row {missing[0] + 1}"
            raise DataError(f"{where}: a sentence-pair task needs a second text on every row")
        if missing:
            pairs = None
    if not texts:
        return {"input_ids": torch.zeros(0, 1, dtype=torch.long), "attention_mask": torch.zeros(0, 1, dtype=torch.long)}
    encoded = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                        max_length=max_length, padding="longest", return_tensors="pt")
    return {k: encoded[k].long() for k in TEXT_INPUTS if k in encoded}


def _tokenize_mixed(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str | None], max_length: int) -> dict[str, Tensor]:
    paired = [i for i, p in enumerate(pairs) if p is not None]
    single = [i for i, p in enumerate(pairs) if p is None]
    parts = [(single, tokenize(tokenizer, [texts[i] for i in single], None, max_length)),
             (paired, tokenize(tokenizer, [texts[i] for i in paired], [pairs[i] for i in paired], max_length))]
    length = max(part["input_ids"].shape[1] for _, part in parts)
    pad = {"input_ids": tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}
    out = {k: torch.full((len(texts), length), pad[k], dtype=torch.long) for k in parts[1][1]}
    for rows, part in parts:
        for k, values in part.items():
            out[k][rows, : values.shape[1]] = values
    return out


def label_indices(values: Sequence[Any], labels: Sequence[str], task: str, sources: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Class indices (-1 where unlabelled) and the row mask of labelled rows."""
    index = {label: i for i, label in enumerate(labels)}
    out = torch.full((len(values),), -1, dtype=torch.long)
    for row, value in enumerate(values):
        if value is None:
            continue
        try:
            out[row] = index[str(value)]
        except KeyError:
            where = sources[row] if sources and sources[row] else f"row {row + 1}"
            raise DataError(f"{where}: label {value!r} is not one of task {task!r}'s labels {list(labels)}") from None
    return out, out >= 0


__all__ = ["TEXT_INPUTS", "label_indices", "tokenize"]
