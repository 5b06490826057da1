"""NLP multi-task learning on a shared transformer encoder (extra ``mtlkit[nlp]``: transformers).

Importing :mod:`mtlkit` never imports this package; this package imports transformers only
where a model or tokenizer is built.
"""
