"""A tiny BERT for NLP tests: a WordPiece vocabulary from the first rows of some text files and a
2-layer, 32-wide encoder, saved with its tokenizer so that ``encoder: {name: <folder>}`` loads it
offline (no hub, no download)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def head_rows(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        return [line for _, line in zip(range(n), f)]


def save_tiny_bert(root: Path, sources: Sequence[tuple[Path, int]], dropout: float = 0.1,
                   max_positions: int = 128) -> tuple[BertTokenizerFast, BertModel]:
    """Build the vocabulary from ``(file, first rows)`` pairs, then save tokenizer and model to ``root``."""
    text = " ".join(line for path, n in sources for line in head_rows(path, n))
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text.lower())))
    chars = sorted({c for w in words for c in w})
    vocab = SPECIALS + words + [c for c in chars if c not in words] + [f"##{c}" for c in chars]
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(root / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=max_positions, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    bert = BertModel(config, add_pooling_layer=False)
    bert.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return tokenizer, bert
