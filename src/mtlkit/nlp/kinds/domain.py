"""Adversarial domain classifier through a gradient reversal layer (domain-adversarial training).

Ganin & Lempitsky ("Unsupervised Domain Adaptation by Backpropagation", ICML 2015, Eq. 13):
the gradient reversal layer ``R_λ`` is the identity in the forward pass and multiplies the
gradient by ``−λ`` in the backward pass, ``dR_λ/dx = −λ·I``. Put between the encoder's pooled
vector and a domain classifier, the classifier learns to tell the domains apart while the
encoder receives the reversed gradient and learns features that hide the domain (the
saddle point of the paper's objective, reached with plain SGD). ``grl_lambda`` is λ: constant
(``grl_schedule: constant``, the default) or annealed as in the paper (§5.2.1), ``grl_schedule: ganin``:
``λ_p = grl_lambda · (2/(1+exp(−10p)) − 1)`` over the fraction ``p`` of training steps done (the
trainer passes it before every step), so the adversary starts silent while the domain classifier
is still noise.

The domain of a row is ``example.domain``: STS-B's genre (reader ``sts``) or, with
``data: {from_tasks: [a, b]}``, the name of the task each text came from. Its loss and accuracy
are reported like any task's; exclude it from model selection by monitoring a main task's
metric (``train.monitor: stsb/pearson``), since a good adversary means a *low* domain accuracy.
``adversarial: false`` drops the reversal: the same head as an ordinary auxiliary task, whose
gradient teaches the encoder the domain instead (the ablation "with vs without reversal").

Example: the encoder's pooled vector gets the domain classifier's gradient times ``−λ``.

    >>> import torch
    >>> head = DomainHead(4, n_domains=2, options=HeadOptions(dropout=0.0), lam=0.5)
    >>> pooled, plain = torch.ones(3, 4, requires_grad=True), torch.ones(3, 4, requires_grad=True)
    >>> head(None, pooled, {}).sum().backward(); head.classifier(None, plain, {}).sum().backward()
    >>> head(None, pooled, {}).shape, torch.allclose(pooled.grad, -0.5 * plain.grad)
    (torch.Size([3, 2]), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor

from mtlkit.nlp.base import NLP_KINDS, HeadOptions, NLPHead
from mtlkit.nlp.heads import PooledHead
from mtlkit.nlp.kinds.classification import ClassificationTask
from mtlkit.nn.gradient_reversal import reverse_gradient, scheduled_lambda


class DomainHead(NLPHead):
    """``R_λ`` then a :class:`PooledHead` over the domains."""

    def __init__(self, hidden_size: int, n_domains: int, options: HeadOptions, lam: float | None, schedule: str = "constant") -> None:
        super().__init__()
        self.lam = lam  # None: no reversal
        self.max_lam, self.schedule = lam, schedule
        if schedule == "ganin" and lam is not None:
            self.lam = 0.0  # progress 0, until the trainer says otherwise
        self.classifier = PooledHead(hidden_size, n_domains, options)

    def set_progress(self, progress: float) -> None:
        if self.schedule == "ganin" and self.max_lam is not None:
            self.lam = scheduled_lambda(self.max_lam, "ganin", progress)

    def forward(self, sequence: Tensor, pooled: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.classifier(sequence, pooled if self.lam is None else reverse_gradient(pooled, self.lam), inputs)


@NLP_KINDS.register("domain")
class DomainTask(ClassificationTask):
    kind: ClassVar[str] = "domain"
    default_metrics: ClassVar[list[str]] = ["accuracy"]

    grl_lambda: float = Field(default=1.0, ge=0.0)
    grl_schedule: Literal["constant", "ganin"] = "constant"
    adversarial: bool = True  # false: no reversal, a plain auxiliary domain classifier (the ablation of the GRL)

    @property
    def mixed_texts(self) -> bool:
        return True

    def label_of(self, example: Any) -> Any:
        return getattr(example, "domain", None)

    def build_head(self, hidden_size: int) -> NLPHead:
        return DomainHead(hidden_size, len(self._labels()), self.head, self.grl_lambda if self.adversarial else None,
                          self.grl_schedule)


__all__ = ["DomainHead", "DomainTask", "reverse_gradient"]
