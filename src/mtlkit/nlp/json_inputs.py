"""One served input (a JSON value of a ``/predict`` request) → the example a task kind featurizes.

``mtlkit serve`` on an NLP run takes texts, not files: each kind's
:meth:`~mtlkit.nlp.base.NLPTask.example_from_json` turns one JSON value into the record its
reader would have made (:class:`~mtlkit.nlp.examples.TextExample`, :class:`~mtlkit.nlp.records.TaggedSentence`,
…), with these helpers; anything else is an :class:`InputError` whose message says what the
kind takes. :func:`token_counts` counts the word pieces an input becomes, special tokens
included, so the service can refuse an over-long input instead of silently truncating it.

Accepted values: a text is a non-empty string (valid Unicode: no lone surrogate); a text pair is
``{"text": …, "text_pair": …}`` or ``[text, text_pair]``; words are a string (split on
whitespace) or ``{"tokens": [word, …]}``.

Example:
    >>> text_example("a fine film", pairs=False, task="sst2")
    TextExample(text='a fine film', text_pair=None, label=None, domain=None, source='')
    >>> text_example({"text": "a", "text_pair": "b"}, pairs=True, task="rte").text_pair
    'b'
    >>> text_example("only one", pairs=True, task="rte")
    Traceback (most recent call last):
    ...
    mtlkit.nlp.json_inputs.InputError: task 'rte' takes text pairs: send {"text": ..., "text_pair": ...} or [text, text_pair]
    >>> words({"tokens": ["New", "York"]}), words("Paris  is nice")
    (('New', 'York'), ('Paris', 'is', 'nice'))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtlkit.nlp.examples import TextExample
from mtlkit.serve.rows import json_type  # one JSON type name for every served-input message


class InputError(ValueError):
    """A served input a task kind cannot take; the message says what it takes."""


def text(value: Any, what: str = "the text") -> str:
    """A non-empty string of valid Unicode; InputError otherwise."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {json_type(value)}")
    if not value.strip():
        raise InputError(f"{what} is empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{what} holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not valid Unicode") from None
    return value


def _fields(value: dict[str, Any], allowed: Sequence[str], shape: str) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(map(repr, unknown))}: send {shape}")


def text_example(value: Any, pairs: bool | None, task: str) -> TextExample:
    """A text or a text pair. ``pairs``: True (the task was trained on pairs), False (single texts), None (either)."""
    shape = '{"text": ..., "text_pair": ...} or [text, text_pair]'
    if isinstance(value, str):
        first, second = text(value), None
    elif isinstance(value, list):
        if len(value) != 2:
            raise InputError(f"a list input is a text pair [text, text_pair], got {len(value)} items")
        first, second = text(value[0], "the text"), text(value[1], "text_pair")
    elif isinstance(value, dict):
        _fields(value, ("text", "text_pair"), shape)
        if "text" not in value:
            raise InputError(f'missing "text": send {shape}')
        first = text(value["text"])
        second = None if value.get("text_pair") is None else text(value["text_pair"], "text_pair")
    else:
        raise InputError(f"an input must be a string or {shape}, got {json_type(value)}")
    if pairs is True and second is None:
        raise InputError(f"task {task!r} takes text pairs: send {shape}")
    if pairs is False and second is not None:
        raise InputError(f"task {task!r} takes single texts, not pairs: send a string")
    return TextExample(first, second)


def words(value: Any) -> tuple[str, ...]:
    """Words of a sentence: a string split on whitespace, or ``{"tokens": [...]}`` / a list of strings."""
    if isinstance(value, dict):
        _fields(value, ("tokens", "text"), '"a sentence" or {"tokens": [word, ...]}')
        value = value.get("tokens", value.get("text"))
    if isinstance(value, str):
        found = tuple(text(value).split())
    elif isinstance(value, list):
        if not value:
            raise InputError("tokens is empty")
        found = tuple(text(w, f"tokens[{i}]") for i, w in enumerate(value))
        if any(len(w.split()) != 1 for w in found):
            raise InputError("a token must not contain whitespace")
    else:
        raise InputError(f'an input must be a sentence string or {{"tokens": [word, ...]}}, got {json_type(value)}')
    return found


def token_counts(tokenizer: Any, first: Sequence[Any], second: Sequence[str | None] | None = None,
                 split_into_words: bool = False) -> list[int]:
    """Word pieces per input, special tokens included, without truncation."""
    if second is not None and all(s is None for s in second):
        second = None
    if second is not None and any(s is None for s in second):
        return [n for i in range(len(first)) for n in token_counts(tokenizer, [first[i]], None if second[i] is None else [second[i]])]
    encoded = tokenizer(list(first), list(second) if second is not None else None, truncation=False,
                        is_split_into_words=split_into_words, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def pairs_of(examples: Sequence[Any]) -> bool | None:
    """True if every training example is a text pair, False if none is, None when mixed (either is served)."""
    paired = {getattr(e, "text_pair", None) is not None for e in examples}
    return next(iter(paired)) if len(paired) == 1 else None


def too_long(counts: Sequence[int], limit: int, task: str, unit: str = "max_length") -> dict[int, str]:
    """``{input: message}`` for the inputs longer than ``limit`` word pieces."""
    return {i: f"{n} word pieces exceed the {unit} of task {task!r} ({limit}): shorten the text"
            for i, n in enumerate(counts) if n > limit}


__all__ = ["InputError", "json_type", "pairs_of", "text", "text_example", "token_counts", "too_long", "words"]
