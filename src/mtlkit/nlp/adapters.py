"""Per-task LoRA adapters on one frozen shared encoder (PEFT; extra ``mtlkit[nlp]``).

``encoder: {name: minilm, adapters: lora, r: 8, alpha: 16}`` freezes the encoder's weights and
gives every task its own low-rank update of the attention projections (LoRA, Hu et al., ICLR 2022,
Eq. 3): ``h = W₀x + (α/r)·B_t A_t x`` with ``A_t ∈ ℝ^{r×k}``, ``B_t ∈ ℝ^{d×r}`` trained per task
``t``, ``W₀`` shared and frozen. Heads are as without adapters. A batch of task ``t`` runs the
encoder with adapter ``t`` active (:func:`activate`); tasks therefore no longer share a forward pass.
Checkpoints hold only the adapters and heads (the base weights come back from ``encoder.name``).

:func:`wrap` builds the PEFT model with one adapter per name; an encoder PEFT cannot wrap (no
module named as ``target_modules``) is a one-line ConfigError naming the key.

Example (``encoder`` is any transformers encoder; tests use a tiny BERT)::

    peft_encoder = wrap(encoder, AdapterSpec(r=4, alpha=8), ["sst2", "ner"])
    activate(peft_encoder, "ner")       # the next forward passes use ner's adapter
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mtlkit.errors import ConfigError

LORA_KEY = "lora_"  # parameter names of the adapters contain it (PEFT's lora_A / lora_B)


class AdapterSpec(BaseModel):
    """The adapter keys of ``encoder:`` (``adapters: lora``, ``r``, ``alpha``, ``adapter_dropout``, ``target_modules``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["lora"] = "lora"
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None  # default: PEFT's for the architecture (BERT: query, value)


def wrap(encoder: nn.Module, spec: AdapterSpec, names: Sequence[str]) -> nn.Module:
    """The encoder frozen, with one trainable LoRA adapter per name (all trainable, whichever is active)."""
    try:
        import peft
    except ImportError:
        raise ConfigError("encoder.adapters: LoRA adapters need peft: pip install 'mtlkit[nlp]'") from None
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,  # type: ignore[arg-type]  # peft annotates lora_alpha int; floats work
                             target_modules=spec.target_modules)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations inside peft
            wrapped = peft.get_peft_model(encoder, config, adapter_name=names[0])
            for name in names[1:]:
                wrapped.add_adapter(name, config)
    except (ValueError, KeyError, TypeError, NotImplementedError) as error:
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"encoder.adapters: PEFT cannot wrap encoder {type(encoder).__name__} ({detail}); "
                          "set encoder.target_modules to the names of its attention projections") from None
    for parameter_name, parameter in wrapped.named_parameters():
        parameter.requires_grad_(LORA_KEY in parameter_name)  # every adapter trains; the base stays frozen
    return wrapped


def activate(encoder: nn.Module, name: str) -> None:
    """Make adapter ``name`` the active one of every LoRA layer, without touching ``requires_grad``
    (PEFT's ``set_adapter`` freezes the others, which would drop their gradients in a multi-task step)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in encoder.modules():
        if isinstance(module, BaseTunerLayer):
            module._active_adapter = [name]


__all__ = ["AdapterSpec", "LORA_KEY", "activate", "wrap"]
