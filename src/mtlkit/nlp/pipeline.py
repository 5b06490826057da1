"""End-to-end relation extraction: relations classified between *predicted* entities (PURE §4).

Zhong & Chen (NAACL 2021) report relation F1 two ways: given gold entities, and end to end —
the entity model's spans, with their predicted types, are the only candidates the relation model
sees, so a missed or mistyped entity costs the relations it takes part in. This module runs that
pipeline on a trained :class:`~mtlkit.nlp.model.NLPMultiTaskModel` holding a ``span_ner`` task and a
``relation`` task (sharing an encoder or not): entities are predicted, each sentence is re-featurized
with them (gold relations kept, so relations among missed entities count as misses), and the
relation task scores its predictions.

Example (with a trained run's model, tasks and test sentences)::

    scores = end_to_end_relations(model, tasks["ner"], tasks["rel"], test_sentences, tokenizer)
    scores["relation_f1"], scores["relation_strict_f1"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mtlkit.nlp.evaluation import predict_task
from mtlkit.nlp.kinds.relation import RelationTask
from mtlkit.nlp.kinds.span_ner import SpanNERTask
from mtlkit.nlp.records import IESentence


def end_to_end_relations(model: nn.Module, entity_task: SpanNERTask, relation_task: RelationTask,
                         sentences: Sequence[IESentence], tokenizer: Any, batch_size: int = 64,
                         device: str | torch.device = "cpu") -> dict[str, float]:
    """Relation metrics (Rel, Rel+) with the entity task's predictions as the only candidates."""
    was_training = model.training
    model.eval()
    try:
        table = entity_task.featurize(sentences, tokenizer)
        outputs, _, _ = predict_task(model, entity_task, table, batch_size, device)
        predicted = entity_task.predict_entities(outputs, table, sentences)
        pairs = relation_task.featurize(predicted, tokenizer)
        outputs, _, _ = predict_task(model, relation_task, pairs, batch_size, device)  # None when no pair at all:
        return relation_task.evaluate(outputs, pairs, predicted)  # then every gold relation is a miss
    finally:
        model.train(was_training)


__all__ = ["end_to_end_relations"]
