"""Every registered backbone and NLP task kind keeps the contracts the trainer names (issue 13).

The trainer, balancers, diagnostics, export and serving talk to models only through
:class:`mtlkit.protocols.TrainableModel`'s hooks; a new registry entry that breaks one of them
would fail far from its cause. Checked for every backbone: the model is a ``TrainableModel``;
outputs per task for a batch of 1 and of 5; shared and task parameters are disjoint and together
cover every trainable parameter (what gradient balancers split on); the gates each name in
``gate_experts`` are distributions over that many experts; ``regularization_loss`` is ``None`` or
a differentiable scalar; the trained tasks are a subset of the tasks. For every NLP kind: it is
registered under its own ``kind``, builds an ``NLPHead`` and names a known loss family.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from mtlkit.data.schema import CategoricalFeature, NumericFeature, SchemaSpec
from mtlkit.models import BACKBONES, ModelSpec, build_model
from mtlkit.nlp.base import NLP_KINDS, NLPHead
from mtlkit.protocols import TrainableModel
from mtlkit.tasks import Task
from test_models import TASKS, scenario_of, toy_table

importlib.import_module("mtlkit.nlp.kinds")  # registers every NLP kind (kept out of `import mtlkit.nlp.base`)

SPEC = SchemaSpec(categorical=[CategoricalFeature(name="cat")], numeric=[NumericFeature(name="x0"), NumericFeature(name="x1")])


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_backbone_models_keep_the_trainable_model_contract(backbone):
    table = toy_table(40, 0)
    schema = SPEC.fit(table)
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone=backbone, tower=[4], **scenario_of(backbone)), schema, TASKS)
    assert isinstance(model, TrainableModel)
    assert set(model.loss_task_names) <= set(model.task_names) == {t.name for t in TASKS}

    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t.name)} for t in TASKS]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert all(not (shared & own) for own in per_task), "a parameter is both shared and task-specific"
    assert all(not (a & b) for i, a in enumerate(per_task) for b in per_task[i + 1:]), "two tasks own one parameter"
    assert shared.union(*per_task) == trainable, "a trainable parameter is neither shared nor a task's"

    for batch in (1, 5):
        inputs = schema.encode(table.slice(0, batch), TASKS).inputs
        model.train()
        out = model(inputs)
        assert set(out) == set(model.task_names)
        assert all(v.shape[0] == batch for v in out.values())
        model.eval()
        with torch.no_grad():
            gates = model.gate_weights(inputs)
        experts = model.gate_experts()
        assert set(gates) == set(experts)
        for name, weights in gates.items():
            assert weights.shape == (batch, len(experts[name])), name
            torch.testing.assert_close(weights.sum(-1), torch.ones(batch), msg=name)
            assert (weights >= 0).all()

    model.train()
    model(schema.encode(table, TASKS).inputs)
    penalty = model.regularization_loss()
    assert penalty is None or (penalty.dim() == 0 and penalty.requires_grad)


@pytest.mark.parametrize("kind", NLP_KINDS.names())
def test_nlp_kinds_build_heads_and_name_a_loss_family(kind):
    cls = NLP_KINDS.get(kind)
    assert cls.kind == kind
    fields = {"name": "t", **({"labels": ["O", "B-X", "I-X"]} if "labels" in cls.model_fields else {})}
    task = cls(**fields)
    head = task.build_head(16)
    assert isinstance(head, NLPHead)
    assert any(p.requires_grad for p in head.parameters())
    assert task.loss_family in {t.loss_family for t in (Task(name="b", kind="binary"), Task(name="r", kind="regression"))}
