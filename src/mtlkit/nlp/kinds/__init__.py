"""Task kinds, one file each, registered in :data:`mtlkit.nlp.base.NLP_KINDS` on import.

Importing this package imports every module in it (a new kind is one new file with
``@NLP_KINDS.register("name")``) and the NLP metrics, but not transformers.

Example:
    >>> from mtlkit.nlp.base import NLP_KINDS
    >>> {"classification", "regression", "ranking", "mlm", "domain"} <= set(NLP_KINDS.names())
    True
"""

from __future__ import annotations

import importlib
import pkgutil

import mtlkit.nlp.metrics

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
