"""The contract every NLP task kind implements, so one model, trainer and balancer serve them all.

mtlkit's NLP half reuses the core: :class:`mtlkit.train.Trainer`, the balancers, model
selection and checkpoints. What differs per task kind (classification, tagging, span QA, …)
lives in one class per kind, registered in :data:`NLP_KINDS`:

- ``featurize(examples, tokenizer)`` turns the kind's examples into an
  :class:`~mtlkit.data.batch.EncodedTable`: ``inputs`` holds ``input_ids``, ``attention_mask``
  (and ``token_type_ids`` when the tokenizer makes them) padded to ``max_length``, plus any
  per-kind tensors (e.g. entity-marker positions); ``targets[name]`` the labels;
  ``masks[name]`` a ``(N,)`` bool row mask.
- ``build_head(hidden_size)`` returns the head, an :class:`NLPHead`: ``forward(sequence, pooled, inputs)``
  with ``sequence`` ``(B, L, H)`` and ``pooled`` ``(B, H)`` (the first token's state).
- ``compute_loss(outputs, target, weight, mask)``: the trainer's task protocol (the same
  signature as :meth:`mtlkit.tasks.Task.compute_loss`): a scalar, exactly 0 for an empty batch.
- ``evaluate(outputs, table, examples)``: metrics over a whole split from the gathered head
  outputs (e.g. span decoding then SQuAD EM/F1). Metric names are registered in
  :data:`mtlkit.metrics.METRICS` so that model selection knows their direction.

A model that holds such tasks sets ``task_aware = True`` and is called as
``model(inputs, tasks)``: a batch holds one task (MT-DNN) or one batch per task in a round, and
only the heads of the batch's tasks run. Validation passes an object with
``evaluate(model, device) -> {task: {metric: value}}`` to :meth:`Trainer.fit`.

Optional hooks (defaults do nothing; see :mod:`mtlkit.nlp.model` for the model's side):

- ``token_level``: True for kinds whose head reads the token states (tagging, span QA,
  relation, masked-LM). Sequence-level kinds read ``pooled``, which is the MMoE/PLE-mixed vector
  when the run configures ``mixing``; token-level kinds always get the raw encoder output.
- ``supported_metrics`` (a ClassVar list): the metric names the kind computes; the run config
  rejects any other in ``metrics`` (without it: any name registered in ``METRICS``).
- ``resolve(train_examples)``: a copy with what the data decides filled in (e.g. the label list
  of a classification task); the resolved task is what ``config.yaml`` of a run records.
- ``fit(train_examples, tokenizer)``: statistics of the training split only, before any split is
  featurized (the token-frequency table); validation and test text never reach it.
- ``check_examples(examples, split)``: raise a one-line DataError for labelled examples the task
  cannot learn from (span QA: a question without an answer unless ``allow_unanswerable``).
- ``calibrate(outputs, table, examples)``: inference-time options chosen after training on the
  validation split's outputs of the best model (span QA's null threshold τ); the run stores them in
  ``calibration.json`` and every loader of the run applies them.
- ``transform_batch(batch, generator)``: a per-batch random transform (masked-LM masking),
  applied by the samplers and the evaluator with a generator seeded by ``(seed, epoch, step)``,
  so resumed runs see exactly the same masks.
- ``prediction_width`` / ``prediction_features(outputs)``: what the task feeds a task that
  lists it in ``prediction_inputs`` (:mod:`mtlkit.nlp.prediction_inputs`); ``pooled_head``
  marks the kinds that can take such inputs.
- ``eval_outputs(outputs, batch)``: shrink one batch's head outputs before they are gathered
  for :meth:`evaluate` (masked-LM keeps per-row loss sums, not ``(B, L, V)`` logits).
- ``predict_records(outputs, table, examples)``: one JSON-able dict per example from the
  gathered outputs, for ``mtlkit predict`` (:mod:`mtlkit.nlp.predict`); ``auxiliary`` marks a
  kind with nothing to predict (masked-LM), skipped when ``predict`` picks a run's task.
- ``example_from_json(value)``, ``single_text`` and ``input_problems(examples, tokenizer)``: what
  ``mtlkit serve`` needs (:mod:`mtlkit.serve.text`): one JSON input → the kind's example
  (:class:`~mtlkit.nlp.json_inputs.InputError` for anything else), whether one plain string is
  a whole input (such tasks answer together), and the inputs too long to take without truncation.

Padding: the model trims every batch to its longest row, so token-level outputs have a
sequence length ``L' ≤`` the table's; ``compute_loss`` slices per-token targets to
``outputs.shape[1]``, and the evaluator right-pads gathered outputs on dim 1 (floats with
:data:`mtlkit.nlp.heads.PAD_LOGIT`, integers with 0) to one length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mtlkit.data.batch import Batch, EncodedTable
from mtlkit.registry import Registry


class HeadOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: list[int] = Field(default_factory=list)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


class NLPHead(nn.Module):
    """A task kind's head: ``forward(sequence, pooled, inputs)`` (see :mod:`mtlkit.nlp.model`), and three optional hooks."""

    rewrites_inputs: ClassVar[bool] = False  # True: the model encodes rewrite_inputs(inputs) for this head (ELECTRA's generator)

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Any) -> Any:
        raise NotImplementedError

    def rewrite_inputs(self, inputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """The inputs the encoder reads for this head, and that ``forward`` then gets (only if ``rewrites_inputs``)."""
        return inputs

    def bind_encoder(self, encoder: nn.Module) -> None:
        """Handed the task's encoder once the model is built (masked-LM ties its decoder to the input embeddings)."""

    def set_progress(self, progress: float) -> None:
        """Hears the fraction of training done before each step (annealed gradient reversal)."""


class NLPTask(BaseModel):
    """One task definition (MT-DNN's task_def entry). Subclasses are the task kinds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = ""
    default_metrics: ClassVar[list[str]] = []
    token_level: ClassVar[bool] = False

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    loss_weight: float = Field(default=1.0, ge=0.0)
    metrics: list[str] | None = None
    encoder: str = "shared"  # "shared", or "own": a separate encoder for this task only
    max_length: int = Field(default=128, ge=8)
    head: HeadOptions = Field(default_factory=HeadOptions)
    prediction_inputs: list[str] = Field(default_factory=list)  # tasks whose predictions feed this head (stop-gradient)

    pooled_head: ClassVar[bool] = False  # the head reads only ``pooled`` (may take prediction_inputs)
    auxiliary: ClassVar[bool] = False  # a training signal only, nothing to predict (masked-LM)

    def featurize(self, examples: Sequence[Any], tokenizer: Any) -> EncodedTable:
        raise NotImplementedError

    def build_head(self, hidden_size: int) -> NLPHead:
        raise NotImplementedError

    def compute_loss(self, outputs: Any, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def evaluate(self, outputs: Any, table: EncodedTable, examples: Sequence[Any]) -> dict[str, float]:
        raise NotImplementedError

    @property
    def loss_family(self) -> str:
        """``"regression"`` or ``"classification"`` (what uncertainty weighting's likelihood is)."""
        return "regression" if self.kind == "regression" else "classification"

    # -- optional hooks ---------------------------------------------------------------------
    def metrics_by_default(self) -> list[str]:
        """The metrics reported when the config names none (a kind's options may change them)."""
        return list(self.default_metrics)

    def resolve(self, train_examples: Sequence[Any]) -> NLPTask:
        return self

    def fit(self, train_examples: Sequence[Any], tokenizer: Any) -> None:
        """Learn what featurizing needs from the training split only (nothing by default)."""

    def check_examples(self, examples: Sequence[Any], split: str) -> None:
        """Raise a DataError for a labelled example this task cannot take (nothing by default)."""

    def calibrate(self, outputs: Any, table: EncodedTable, examples: Sequence[Any]) -> dict[str, Any]:
        """Task option updates chosen on the validation split after training (none by default)."""
        return {}

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        return batch

    def eval_outputs(self, outputs: Any, batch: Batch) -> Any:
        return outputs

    def predict_records(self, outputs: Any, table: EncodedTable, examples: Sequence[Any]) -> list[dict[str, Any]]:
        """One JSON-able record per example, in ``examples`` order (``outputs``: :func:`~mtlkit.nlp.evaluation.predict_task`'s)."""
        raise NotImplementedError(f"task kind {self.kind!r} does not write predictions")

    def example_from_json(self, value: Any) -> Any:
        """The example a served JSON input stands for; :class:`~mtlkit.nlp.json_inputs.InputError` if it is not one."""
        from mtlkit.nlp.json_inputs import InputError

        raise InputError(f"task kind {self.kind!r} cannot be served")

    @property
    def single_text(self) -> bool:
        """Whether one plain string is a complete input (a request without ``task`` asks every such task)."""
        return False

    def input_problems(self, examples: Sequence[Any], tokenizer: Any) -> dict[int, str]:
        """``{index: why}`` for served examples too long to predict without truncation (none by default)."""
        return {}

    @property
    def prediction_width(self) -> int | None:
        """Width of :meth:`prediction_features` (None: this kind cannot feed another task)."""
        return None

    def prediction_features(self, outputs: Tensor) -> Tensor:
        """``(B, prediction_width)`` features of the head's outputs (see :mod:`mtlkit.nlp.prediction_inputs`)."""
        raise NotImplementedError(f"task kind {self.kind!r} has no prediction to feed another task")


NLP_KINDS: Registry[type[NLPTask]] = Registry("NLP task kind")


__all__ = ["HeadOptions", "NLPHead", "NLPTask", "NLP_KINDS"]
