"""A ``/predict`` request body: read under a byte limit as it arrives, then parsed to its ``rows``.

The limit counts the bytes actually received, chunk by chunk, so a chunked body (no
``Content-Length``) or one that lies about its length stops at the limit with a 413 instead of
growing the server's memory. Parsing accepts strict UTF-8 JSON only and turns everything
Python's parser can raise on hostile input — malformed text, nesting deeper than the recursion
limit, integers longer than Python converts (4,300 digits) — into a 400 naming the problem.

Example:
    >>> parse_rows(b'{"rows": [{"city": "a"}]}', max_batch=10)
    [{'city': 'a'}]
    >>> parse_rows(b'[' * 100_000, max_batch=10)
    Traceback (most recent call last):
    ...
    mtlkit.serve.rows.RequestError: malformed JSON: nested too deeply (send rows as a list of flat objects)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from mtlkit.serve.rows import RequestError, json_type

SHAPE = '{"rows": [{feature: value, ...}, ...]}'


class BodyTooLarge(RequestError):
    """413 before the whole body was read: the rest of it is still on the connection, which must close."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The whole body, or RequestError 413 as soon as more than ``limit`` bytes were declared or received."""
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > limit:
        raise BodyTooLarge(f"request body of {int(content_length)} bytes exceeds the limit of {limit} bytes: split the request")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes (stopped reading at {len(body)}): split the request")
    return bytes(body)


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; RequestError 400 for anything that is not one strict UTF-8 JSON text."""
    if not body.strip():
        raise RequestError(400, f"empty request body: send a JSON object {SHAPE}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"the body is not UTF-8: invalid byte at offset {error.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"malformed JSON: {error}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply (send rows as a list of flat objects)") from None
    except ValueError as error:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        if "integer string conversion" in str(error):
            raise RequestError(400, "malformed JSON: a number has more than 4300 digits") from None
        raise RequestError(400, f"malformed JSON: {error}") from None


def parse_rows(body: bytes, max_batch: int) -> list[dict[str, Any]]:
    """The ``rows`` of a ``{"rows": [...]}`` request body; RequestError (400/413/422) otherwise."""
    payload = parse_json(body)
    if not isinstance(payload, dict) or "rows" not in payload:
        raise RequestError(422, f'the body must be a JSON object with a "rows" list: {SHAPE}')
    rows = payload["rows"]
    if not isinstance(rows, list):
        raise RequestError(422, f'"rows" must be a list of objects, got {json_type(rows)}')
    if not rows:
        raise RequestError(422, '"rows" is empty: send at least one row')
    if len(rows) > max_batch:
        raise RequestError(413, f"{len(rows)} rows exceed the batch limit of {max_batch}: split the request")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"rows[{i}] must be an object of feature values, got {json_type(row)}")
    return rows


__all__ = ["SHAPE", "BodyTooLarge", "parse_json", "parse_rows", "read_body"]
