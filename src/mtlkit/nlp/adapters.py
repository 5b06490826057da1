"""Per-task LoRA adapters on one frozen shared encoder (PEFT; extra ``mtlkit[nlp]``).

``encoder: {name: minilm, adapters: lora, r: 8, alpha: 16}`` freezes the encoder's weights and
gives every task its own low-rank update of the attention projections (LoRA, Hu et al., ICLR 2022,
Eq. 3): ``h = W₀x + (α/r)·B_t A_t x`` with ``A_t ∈ ℝ^{r×k}``, ``B_t ∈ ℝ^{d×r}`` trained per task
``t``, ``W₀`` shared and frozen. Heads are as without adapters. A batch of task ``t`` runs the
encoder with adapter ``t`` active (:func:`activate`); tasks therefore no longer share a forward pass.
Checkpoints hold only the adapters and heads (the base weights come back from ``encoder.name``).

``groups: {sentiment: [sst2, imdb], nli: [rte, mnli]}`` gives a task group one adapter instead
(``B_g A_g`` for every task ``t`` of group ``g``): the group's tasks update the same low-rank
matrices and, in one batch, share one encoder pass. A task in no group keeps its own adapter, named
after the task; a group may not take the name of a task outside it, hold no task, or share a task
with another group (:func:`check_groups`, :func:`adapter_names`).

:func:`wrap` builds the PEFT model with one adapter per name; an encoder PEFT cannot wrap (no
module named as ``target_modules``) is a one-line ConfigError naming the key.

Example (``encoder`` is any transformers encoder; tests use a tiny BERT)::

    peft_encoder = wrap(encoder, AdapterSpec(r=4, alpha=8), ["sst2", "ner"])
    activate(peft_encoder, "ner")       # the next forward passes use ner's adapter

Grouping (pure Python, runs as a doctest):
    >>> adapter_names({"sentiment": ["sst2", "imdb"]}, ["sst2", "imdb", "ner"])
    {'sst2': 'sentiment', 'imdb': 'sentiment', 'ner': 'ner'}
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
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
    groups: dict[str, list[str]] = Field(default_factory=dict)  # {group: [task, …]}: one adapter per group


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")  # as task names: an adapter's name sits inside parameter names


def check_groups(groups: Mapping[str, Sequence[str]]) -> None:
    """Raise ValueError (one line) for a group that is empty, badly named, or shares a task with another group."""
    owner: dict[str, str] = {}
    for group, members in groups.items():
        if not _NAME.match(group):
            raise ValueError(f"group name {group!r} must be letters, digits, _ or - (it names the adapter's parameters)")
        if not members:
            raise ValueError(f"group {group!r} is empty; list its tasks or remove it")
        for task in members:
            if task in owner:
                raise ValueError(f"task {task!r} is in two groups, {owner[task]!r} and {group!r}" if owner[task] != group
                                 else f"task {task!r} is listed twice in group {group!r}")
            owner[task] = group


def adapter_names(groups: Mapping[str, Sequence[str]], tasks: Sequence[str]) -> dict[str, str]:
    """``{task: adapter}``: a grouped task's group, any other task its own adapter (named after it).

    Raises ValueError naming ``encoder.groups`` for a task not in ``tasks`` or a group named after a task outside it.
    """
    check_groups(groups)
    of = {task: group for group, members in groups.items() for task in members}
    for group, members in groups.items():
        unknown = [t for t in members if t not in tasks]
        if unknown:
            raise ValueError(f"encoder.groups.{group}: unknown task {unknown[0]!r}; tasks are: {', '.join(tasks)}")
        if group in tasks and group not in members:
            raise ValueError(f"encoder.groups.{group}: the group has the name of task {group!r}, which is not in it "
                             "(that task's own adapter takes its name); rename the group")
    return {task: of.get(task, task) for task in tasks}


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


__all__ = ["AdapterSpec", "LORA_KEY", "activate", "adapter_names", "check_groups", "wrap"]
