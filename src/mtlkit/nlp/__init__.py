"""NLP multi-task learning on a shared transformer encoder (extra ``mtlkit[nlp]``: transformers).

Importing :mod:`mtlkit` never imports this package; this package imports transformers only
where a model or tokenizer is built (:mod:`mtlkit.nlp.encoder`).

Map: :mod:`~mtlkit.nlp.base` (the task-kind contract), :mod:`~mtlkit.nlp.kinds` (one file per
kind), :mod:`~mtlkit.nlp.readers` (one file per data format), :mod:`~mtlkit.nlp.encoder`
(offline model loading, MiniLM), :mod:`~mtlkit.nlp.model` (encoders, optional MMoE/PLE mixing,
heads), :mod:`~mtlkit.nlp.sampling` (task samplers), :mod:`~mtlkit.nlp.evaluation` (per-task
validation), :mod:`~mtlkit.nlp.config` (the YAML run config) and :mod:`~mtlkit.nlp.run`
(``mtlkit train`` for NLP configs).
"""
