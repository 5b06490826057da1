"""One transformer encoder (or one per task), optional MMoE/PLE mixing, one head per task.

MT-DNN (Liu et al., ACL 2019, §3, Fig. 1): shared lexicon and transformer layers, task-specific
output layers. :class:`NLPMultiTaskModel` is *task-aware*: the trainer calls
``model(inputs, tasks)`` with the tasks of the batch, and only those heads run.

What the heads see — the convention every task kind follows (see :mod:`mtlkit.nlp.base`):

- ``head(sequence, pooled, inputs)``: ``sequence`` ``(B, L', H)`` token states of the task's
  encoder, ``pooled`` ``(B, H)`` (first token or mean, ``encoder.pooling``), ``inputs`` the
  batch's inputs. ``L'`` is the batch's longest row (:func:`trim_padding`): text inputs
  (``input_ids``, ``attention_mask``, ``token_type_ids``) and every input named ``tok:<name>``
  are cut to ``L'`` on their last dimension; other inputs are passed unchanged.
- ``(B, k, L)`` text inputs (ranking candidates) are encoded as ``B·k`` rows; the head gets
  ``(B·k, L', H)`` / ``(B·k, H)`` and the unflattened ``inputs`` to fold its output back.
- ``encoder: own`` gives a task a separate copy of the encoder loaded from the same weights
  (Zhong & Chen 2021's case for separate entity and relation encoders); ``shared`` (default)
  uses the one shared encoder. An encoder runs once per batch for all its tasks.
- ``mixing: {backbone: mmoe, options: {...}}`` puts a registered backbone
  (:data:`mtlkit.models.BACKBONES`: ``mmoe``, ``ple``, ``cgc``, …) on the shared encoder's
  pooled vector (MMoE, Ma et al. KDD 2018, Eq. 6–8: ``f^k(x) = Σ_i g^k(x)_i f_i(x)``); each
  sequence-level task on the shared encoder reads its own mixture (projected back to ``H`` when
  the experts are narrower) as ``pooled``; token-level kinds (``token_level = True``) keep the
  raw states.
- ``prediction_inputs: [a, …]`` on a sequence-level task appends the predictions of tasks ``a, …``
  on the same texts, computed under ``no_grad`` (a stop-gradient), to its pooled vector
  (:mod:`mtlkit.nlp.prediction_inputs`).
- A head with ``bind_encoder(encoder)`` is handed its task's encoder after construction
  (masked-LM ties its decoder to the input embeddings this way).
- A head with ``rewrites_inputs`` gets its own encoder pass over ``head.rewrite_inputs(inputs)``
  (ELECTRA's discriminator reads the text its generator corrupted, :mod:`mtlkit.nlp.electra`).

Gradient balancers see ``shared_parameters()`` = the shared encoder and the mixing backbone;
``task_parameters(task)`` = the task's head and, for ``own``, its encoder.

Example (``BertModel`` stands for any transformers encoder; tests build a tiny one):
    >>> import torch
    >>> from mtlkit.nlp.kinds.classification import ClassificationTask
    >>> class Toy(torch.nn.Module):          # the encoder interface the model relies on
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.config = type("C", (), {"hidden_size": 4})()
    ...         self.embed = torch.nn.Embedding(10, 4)
    ...     def forward(self, input_ids, attention_mask):
    ...         return (self.embed(input_ids),)
    >>> task = ClassificationTask(name="sst2", labels=["0", "1"])
    >>> model = NLPMultiTaskModel({"shared": Toy()}, [task])
    >>> ids = torch.tensor([[2, 5, 3, 0, 0]])
    >>> model({"input_ids": ids, "attention_mask": (ids > 0).long()}, ("sst2",))["sst2"].shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from mtlkit.models.base import BACKBONES, Backbone
from mtlkit.nlp.base import NLPHead, NLPTask
from mtlkit.nlp.encoder import EncoderSpec, accepts_token_types, hidden_size, load_encoder, pool
from mtlkit.nlp.featurize import TEXT_INPUTS
from mtlkit.nlp.prediction_inputs import check_prediction_inputs, extra_width
from mtlkit.protocols import TrainableModel

SHARED = "shared"
ADAPTER = "adapter:"  # a task's encoder key with per-task adapters: the shared encoder with its adapter active


class MixingSpec(BaseModel):
    """``mixing: {backbone: mmoe, options: {experts: 4, expert_hidden: [256]}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backbone: str = "mmoe"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> MixingSpec:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of: {', '.join(BACKBONES.names())}")
        BACKBONES.get(self.backbone).Options(**self.options)
        return self


def trim_padding(inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Cut text and ``tok:`` inputs to the last column any row uses (one host sync per batch)."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.shape[-1] == 0:
        return dict(inputs)
    used = mask.reshape(-1, mask.shape[-1]).any(0)
    length = mask.shape[-1] - int(used.flip(0).int().argmax())  # all unused: argmax 0, nothing is cut
    if length == mask.shape[-1]:
        return dict(inputs)
    return {k: v[..., :length] if k in TEXT_INPUTS or k.startswith("tok:") else v for k, v in inputs.items()}


def encoder_key(task: NLPTask) -> str:
    return SHARED if task.encoder == SHARED else f"own_{task.name}"


class NLPMultiTaskModel(TrainableModel):
    """Encoders (one shared, or own per task), optional mixing, one :class:`~mtlkit.nlp.base.NLPHead` per task."""

    task_aware = True

    def __init__(self, encoders: Mapping[str, nn.Module], tasks: Sequence[NLPTask], pooling: str = "cls",
                 mixing: MixingSpec | None = None, adapters: Any = None) -> None:
        super().__init__([t.name for t in tasks])
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean' (resolve 'auto' with EncoderSpec.resolved()), got {pooling!r}")
        self.tasks = {t.name: t for t in tasks}
        self.encoder_of = {t.name: encoder_key(t) for t in tasks}
        missing = sorted(set(self.encoder_of.values()) - set(encoders))
        if missing:
            raise ValueError(f"no encoder given for {missing}")
        self.encoders = nn.ModuleDict({k: encoders[k] for k in sorted(set(self.encoder_of.values()))})
        self.pooling = pooling
        self._token_types = {k: accepts_token_types(e) for k, e in self.encoders.items()}
        self.hidden_size = hidden_size(next(iter(self.encoders.values())))
        check_prediction_inputs(tasks)  # raises on unknown sources, unsupported kinds, cycles
        self.heads: Mapping[str, NLPHead] = nn.ModuleDict(  # type: ignore[assignment]  # torch stub: ModuleDict is not generic
            {t.name: t.build_head(self.hidden_size + extra_width(t, self.tasks)) for t in tasks})
        for name, head in self.heads.items():
            head.bind_encoder(self.encoders[self.encoder_of[name]])
        # Per-task (or per-group) LoRA adapters (mtlkit.nlp.adapters): each task's key names its adapter on the one frozen encoder.
        self.adapter_of: dict[str, str] = {}
        if adapters is not None:
            if set(self.encoder_of.values()) != {SHARED}:
                raise ValueError("encoder.adapters: every task must use the shared encoder (no `encoder: own`)")
            if mixing is not None:
                raise ValueError("encoder.adapters: mixing reads one shared pooled vector; with adapters each task has its own")
            from mtlkit.nlp.adapters import adapter_names, wrap

            adapter = adapter_names(adapters.groups, [t.name for t in tasks])  # {task: its adapter (own, or its group's)}
            self.encoders[SHARED] = wrap(self.encoders[SHARED], adapters, list(dict.fromkeys(adapter.values())))
            self.encoder_of = {t.name: f"{ADAPTER}{adapter[t.name]}" for t in tasks}  # a group's tasks share one encoder pass
            self.adapter_of = {f"{ADAPTER}{a}": a for a in adapter.values()}
        self.mixed_names = [t.name for t in tasks if not t.token_level and self.encoder_of[t.name] == SHARED] if mixing else []
        self.mixing: Backbone | None = None
        self.mix_projection: nn.Module | None = None
        if mixing is not None and self.mixed_names:
            cls = BACKBONES.get(mixing.backbone)
            self.mixing = cls(self.hidden_size, self.mixed_names, cls.Options(**mixing.options))
            if self.mixing.output_dim != self.hidden_size:
                self.mix_projection = nn.Linear(self.mixing.output_dim, self.hidden_size)

    # -- forward ---------------------------------------------------------------------------
    def encode(self, key: str, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(sequence, pooled)`` of encoder ``key``; ``(B, k, L)`` inputs are flattened to ``B·k`` rows."""
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        module = SHARED if key in self.adapter_of else key
        if self._token_types[module] and "token_type_ids" in inputs:
            kwargs["token_type_ids"] = inputs["token_type_ids"]
        kwargs = {k: v.reshape(-1, v.shape[-1]) for k, v in kwargs.items()}
        if key in self.adapter_of:
            from mtlkit.nlp.adapters import activate

            activate(self.encoders[SHARED], self.adapter_of[key])
        sequence = self.encoders[module](**kwargs)[0]  # last_hidden_state of any transformers encoder
        return sequence, pool(sequence, kwargs["attention_mask"], self.pooling)

    def mix(self, pooled: Tensor) -> dict[str, Tensor]:
        """``{task: (B, H)}``: each mixed task's expert mixture of the shared pooled vector."""
        assert self.mixing is not None
        mixed = self.mixing(pooled)
        if self.mix_projection is not None:
            mixed = {name: self.mix_projection(v) for name, v in mixed.items()}
        return mixed

    def forward(self, inputs: Mapping[str, Tensor], tasks: Sequence[str] | None = None, trim: bool = True) -> dict[str, Any]:
        """Each asked task's head output; ``trim=False`` keeps the inputs' padding (a traced graph: no data-dependent length)."""
        inputs = trim_padding(inputs) if trim else dict(inputs)
        names = [n for n in (tasks if tasks is not None else self.heads.keys()) if n in self.heads]
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(self.encoder_of[name], []).append(name)
        outputs: dict[str, Any] = {}
        if self.keep_shared_features:
            self.last_shared_features = None  # never a stale graph from an earlier batch
        encoded: dict[str, tuple[Tensor, Tensor]] = {}
        predicted: dict[str, Tensor] = {}  # source predictions of this batch, shared by every consumer
        for key, members in groups.items():
            for batch_members, batch_inputs in self._passes(members, inputs):
                sequence, pooled = self.encode(key, batch_inputs)
                if batch_inputs is inputs:
                    encoded[key] = (sequence, pooled)
                if key == SHARED and self.keep_shared_features and torch.is_grad_enabled() and self.last_shared_features is None:
                    self.last_shared_features = sequence  # every head reads it (pooled is a function of it)
                mixed = (self.mix(pooled) if key == SHARED and self.mixing is not None and any(n in self.mixed_names for n in batch_members)
                         else {})
                for name in batch_members:
                    vector = mixed.get(name, pooled)
                    if self.tasks[name].prediction_inputs:
                        with torch.no_grad():  # the stop-gradient: this task's loss never trains its sources
                            features = self._prediction_inputs(name, inputs, encoded, predicted)
                        vector = torch.cat([vector, features.to(vector.dtype)], dim=-1)
                    outputs[name] = self.heads[name](sequence, vector, batch_inputs)
        return outputs

    def _passes(self, members: Sequence[str], inputs: Mapping[str, Tensor]) -> list[tuple[list[str], Mapping[str, Tensor]]]:
        """Encoder passes of one encoder's tasks: one over the batch's inputs, one per head that rewrites them (ELECTRA)."""
        plain = [n for n in members if not self.heads[n].rewrites_inputs]
        own = [([n], self.heads[n].rewrite_inputs(inputs)) for n in members if self.heads[n].rewrites_inputs]
        return ([(plain, inputs)] if plain else []) + own

    def _prediction_inputs(self, name: str, inputs: Mapping[str, Tensor], encoded: dict[str, tuple[Tensor, Tensor]],
                           done: dict[str, Tensor]) -> Tensor:
        """``(B, Σ widths)``: the predictions of ``name``'s source tasks on this batch's texts (call under no_grad)."""
        features = []
        for source in self.tasks[name].prediction_inputs:
            if source not in done:
                key = self.encoder_of[source]
                if key not in encoded:  # a source on another encoder than any task of the batch
                    encoded[key] = self.encode(key, inputs)
                sequence, pooled = encoded[key]
                vector = self.mix(pooled)[source] if self.mixing is not None and source in self.mixed_names else pooled
                if self.tasks[source].prediction_inputs:  # a chain A → B → C
                    vector = torch.cat([vector, self._prediction_inputs(source, inputs, encoded, done).to(vector.dtype)], dim=-1)
                done[source] = self.tasks[source].prediction_features(self.heads[source](sequence, vector, inputs))
            features.append(done[source])
        return torch.cat(features, dim=-1)

    def set_training_progress(self, progress: float) -> None:
        """Called by the trainer before each step with the fraction of training done; passed to heads that schedule on it."""
        for head in self.heads.values():
            head.set_progress(progress)

    def gate_weights(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The mixing backbone's gate weights ``{gate: (B, experts)}`` on these inputs."""
        if self.mixing is None:
            return {}
        _, pooled = self.encode(SHARED, trim_padding(inputs))
        return self.mixing.gate_weights(pooled)

    def gate_experts(self) -> dict[str, list[str]]:
        return self.mixing.gate_experts() if self.mixing is not None else {}

    def input_encoders(self) -> list[nn.Module]:
        return list(self.encoders.values())

    # -- parameter groups for balancers -------------------------------------------------------
    def shared_parameters(self) -> Iterator[nn.Parameter]:
        if SHARED in self.encoders:
            yield from self.encoders[SHARED].parameters()
        for module in (self.mixing, self.mix_projection):
            if module is not None:
                yield from module.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every task head's parameters (``train.head_lr`` applies to them; a bound MLM decoder's tied embedding is the encoder's)."""
        encoder_ids = {id(p) for e in self.encoders.values() for p in e.parameters()}
        for head in self.heads.values():
            yield from (p for p in head.parameters() if id(p) not in encoder_ids)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        if task in self.heads:
            yield from self.heads[task].parameters()
        key = self.encoder_of.get(task)
        if key in self.adapter_of:  # the task's adapter (its group's, shared with the group's other tasks)
            yield from (p for n, p in self.encoders[SHARED].named_parameters() if f".{self.adapter_of[key]}." in n and "lora_" in n)
        elif key is not None and key != SHARED:
            yield from self.encoders[key].parameters()

    # -- checkpoints: with adapters, only what trains (adapters, heads) ------------------------
    def _frozen_key(self, key: str) -> bool:
        return bool(self.adapter_of) and key.startswith(f"encoders.{SHARED}.") and "lora_" not in key

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Without adapters, the whole model; with them, the adapters and heads only (the base encoder is ``encoder.name``'s)."""
        state = super().state_dict(*args, **kwargs)
        if not self.adapter_of:
            return state
        for key in [k for k in state if self._frozen_key(k)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if not self.adapter_of:
            return super().load_state_dict(state_dict, strict, assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not self._frozen_key(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"Error(s) in loading state_dict: missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")
        return result


def build_nlp_model(spec: EncoderSpec, tasks: Sequence[NLPTask], mixing: MixingSpec | None = None,
                    encoder: nn.Module | None = None) -> NLPMultiTaskModel:
    """Load the encoder once; ``own`` tasks get deep copies of it (same weights, separate parameters)."""
    base = encoder if encoder is not None else load_encoder(spec)
    keys = sorted({encoder_key(t) for t in tasks})
    encoders = {key: base if i == 0 else copy.deepcopy(base) for i, key in enumerate(keys)}
    return NLPMultiTaskModel(encoders, tasks, spec.resolved().pooling, mixing, spec.adapter_spec)


__all__ = ["MixingSpec", "NLPMultiTaskModel", "SHARED", "build_nlp_model", "encoder_key", "trim_padding"]
