"""HTTP fuzz of ``/predict``: hostile and malformed bodies against the PyTorch run and its ONNX export.

Every body of the table gets its exact status (400: not one strict UTF-8 JSON text; 413: too many
rows or bytes; 422: the wrong shape or a value the model cannot take) and a ``detail`` naming the
problem (the row and feature when there is one) — never a 5xx. Hostile but valid bodies get a
200 whose values are finite or null. The tables below are the HTTP part of the bad-input corpus:
add a :class:`Bad` (or a value to ``BAD_VALUES``) for every bug found from now on.

In process (Starlette's TestClient; the streamed-body and keep-alive cases against a real
server are in test_serve_limits.py), micro-batching on as served by default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from mtlkit.export import export_run
from mtlkit.serve import create_app

from serving_runs import shared_run

MAX_BATCH = 8
MAX_BODY = 1024 * 1024
BACKENDS = ("pytorch", "onnx")
GOOD = {"user": "u1", "item": 3, "price": 12.5, "hist": "1|2", "tags": ["news"]}  # the mmoe_sequence run's features
DELETE = object()


@dataclass(frozen=True)
class Bad:
    """A body and what the server must answer: ``status``, and a ``detail`` containing every string of ``names``."""

    id: str
    body: bytes
    status: int
    names: tuple[str, ...]


def rows(*values: Any) -> bytes:
    return json.dumps({"rows": list(values)}).encode()


def with_value(feature: str, value: Any, at: int, n: int) -> bytes:
    """``n`` good rows but row ``at`` holds ``value`` for ``feature`` (DELETE: lacks it)."""
    bad = {k: v for k, v in GOOD.items() if k != feature}
    if value is not DELETE:
        bad[feature] = value
    return rows(*[bad if i == at else GOOD for i in range(n)])


def nested(depth: int, opening: str = "[", closing: str = "]") -> str:
    return opening * depth + closing * depth


# -- 400: not one strict UTF-8 JSON text -----------------------------------------------------------
NOT_JSON = "malformed JSON"
NOT_UTF8 = "the body is not UTF-8"
DEEP = "nested too deeply"
BODY_CASES = [
    Bad("empty", b"", 400, ("empty request body",)),
    Bad("whitespace only", b" \n\t ", 400, ("empty request body",)),
    Bad("open brace", b"{", 400, (NOT_JSON,)),
    Bad("open rows", b'{"rows": [', 400, (NOT_JSON,)),
    Bad("truncated row", b'{"rows": [{"user": "u1"', 400, (NOT_JSON,)),
    Bad("close brace", b"}", 400, (NOT_JSON,)),
    Bad("close bracket", b"]", 400, (NOT_JSON,)),
    Bad("mismatched brackets", b'{"rows": [}', 400, (NOT_JSON,)),
    Bad("missing colon", b'{"rows" []}', 400, (NOT_JSON,)),
    Bad("single quotes", b"{'rows': []}", 400, (NOT_JSON,)),
    Bad("trailing comma", b'{"rows": [],}', 400, (NOT_JSON,)),
    Bad("unquoted key", b"{rows: []}", 400, (NOT_JSON,)),
    Bad("trailing garbage", b'{"rows": [{}]} x', 400, (NOT_JSON, "Extra data")),
    Bad("two documents", b'{"rows": []}{"rows": []}', 400, (NOT_JSON, "Extra data")),
    Bad("comment", b'/* c */ {"rows": []}', 400, (NOT_JSON,)),
    Bad("leading zero", b'{"rows": [01]}', 400, (NOT_JSON,)),
    Bad("bad exponent", b'{"rows": [1e]}', 400, (NOT_JSON,)),
    Bad("lone minus", b'{"rows": [-]}', 400, (NOT_JSON,)),
    Bad("truncated true", b'{"rows": [tru]}', 400, (NOT_JSON,)),
    Bad("truncated null", b'{"rows": [nul]}', 400, (NOT_JSON,)),
    Bad("unterminated string", b'"unterminated', 400, (NOT_JSON,)),
    Bad("invalid escape", b'{"rows": ["\\x41"]}', 400, (NOT_JSON, "escape")),
    Bad("short unicode escape", b'{"rows": ["\\u12"]}', 400, (NOT_JSON,)),
    Bad("non-hex unicode escape", b'{"rows": ["\\uZZZZ"]}', 400, (NOT_JSON,)),
    Bad("raw tab in string", b'{"rows": [{"user": "a\tb"}]}', 400, (NOT_JSON, "control character")),
    Bad("raw NUL in string", b'{"rows": [{"user": "a\x00b"}]}', 400, (NOT_JSON, "control character")),
    Bad("NUL byte body", b"\x00", 400, (NOT_JSON,)),
    Bad("hex literal", b'{"rows": [0x10]}', 400, (NOT_JSON,)),
    Bad("plus sign number", b'{"rows": [{"price": +1}]}', 400, (NOT_JSON,)),
    Bad("UTF-16 with BOM", '{"rows": []}'.encode("utf-16"), 400, (NOT_UTF8,)),
    Bad("UTF-32", '{"rows": []}'.encode("utf-32"), 400, (NOT_UTF8,)),
    Bad("Latin-1 byte in string", b'{"rows": [{"user": "caf\xe9"}]}', 400, (NOT_UTF8,)),
    Bad("0xff byte", b'{"rows": [{"user": "\xff"}]}', 400, (NOT_UTF8,)),
    Bad("UTF-8-encoded surrogate", b'{"rows": [{"user": "\xed\xa0\x80"}]}', 400, (NOT_UTF8,)),
    Bad("overlong UTF-8", b'{"rows": [{"user": "\xc0\xaf"}]}', 400, (NOT_UTF8,)),
    Bad("truncated UTF-8 sequence", b'{"rows": [{"user": "\xe2\x82"}]}', 400, (NOT_UTF8,)),
    Bad("UTF-8 BOM", b'\xef\xbb\xbf{"rows": []}', 400, (NOT_JSON, "BOM")),
    Bad("5000-digit integer", b'{"rows": [{"item": ' + b"9" * 5000 + b"}]}", 400, ("more than 4300 digits",)),
    Bad("4301-digit integer", b'{"rows": ' + b"1" * 4301 + b"}", 400, ("more than 4300 digits",)),
    Bad("arrays nested 100k deep", nested(100_000).encode(), 400, (DEEP,)),
    Bad("objects nested 100k deep", ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(), 400, (DEEP,)),
    Bad("rows nested 100k deep", ('{"rows": ' + nested(100_000) + "}").encode(), 400, (DEEP,)),
    Bad("feature value nested 100k deep", ('{"rows": [{"user": ' + nested(100_000) + "}]}").encode(), 400, (DEEP,)),
    Bad("arrays nested 5000 deep", nested(5_000).encode(), 400, (DEEP,)),
]

# -- 422: JSON, but not {"rows": [objects]} ------------------------------------------------------------
NOT_OBJECT = 'the body must be a JSON object with a "rows" list'
SHAPE_CASES = [
    Bad("empty array", b"[]", 422, (NOT_OBJECT,)),
    Bad("array of numbers", b"[1, 2]", 422, (NOT_OBJECT,)),
    Bad("number", b"1", 422, (NOT_OBJECT,)),
    Bad("string", b'"rows"', 422, (NOT_OBJECT,)),
    Bad("null", b"null", 422, (NOT_OBJECT,)),
    Bad("true", b"true", 422, (NOT_OBJECT,)),
    Bad("NaN literal", b"NaN", 422, (NOT_OBJECT,)),
    Bad("empty object", b"{}", 422, (NOT_OBJECT,)),
    Bad("key row", b'{"row": []}', 422, (NOT_OBJECT,)),
    Bad("key ROWS", b'{"ROWS": []}', 422, (NOT_OBJECT,)),
    Bad("rows null", b'{"rows": null}', 422, ('"rows" must be a list of objects, got null',)),
    Bad("rows number", b'{"rows": 1}', 422, ('"rows" must be a list of objects, got number',)),
    Bad("rows string", b'{"rows": "u1"}', 422, ('"rows" must be a list of objects, got string',)),
    Bad("rows boolean", b'{"rows": true}', 422, ('"rows" must be a list of objects, got boolean',)),
    Bad("rows empty object", b'{"rows": {}}', 422, ('"rows" must be a list of objects, got object',)),
    Bad("rows one object", json.dumps({"rows": GOOD}).encode(), 422, ('"rows" must be a list of objects, got object',)),
    Bad("rows NaN", b'{"rows": NaN}', 422, ('"rows" must be a list of objects, got number',)),
    Bad("rows empty", b'{"rows": []}', 422, ('"rows" is empty',)),
    Bad("row number", b'{"rows": [1]}', 422, ("rows[0] must be an object of feature values, got number",)),
    Bad("row string", b'{"rows": ["u1"]}', 422, ("rows[0] must be an object of feature values, got string",)),
    Bad("row null", b'{"rows": [null]}', 422, ("rows[0] must be an object of feature values, got null",)),
    Bad("row list", b'{"rows": [[]]}', 422, ("rows[0] must be an object of feature values, got list",)),
    Bad("row boolean", b'{"rows": [true]}', 422, ("rows[0] must be an object of feature values, got boolean",)),
    Bad("second row number", rows(GOOD, 1), 422, ("rows[1] must be an object of feature values, got number",)),
    Bad("third row null", rows(GOOD, GOOD, None), 422, ("rows[2] must be an object of feature values, got null",)),
    Bad("second row wrapped in a list", rows(GOOD, [GOOD]), 422, ("rows[1] must be an object of feature values, got list",)),
    Bad("duplicate rows key, last bad", b'{"rows": [{}], "rows": 5}', 422, ('"rows" must be a list of objects, got number',)),
]

# -- 413: too many rows or bytes ---------------------------------------------------------------------
LIMIT_CASES = [
    Bad("one row over the batch limit", rows(*[GOOD] * (MAX_BATCH + 1)), 413, (f"{MAX_BATCH + 1} rows exceed the batch limit of {MAX_BATCH}",)),
    Bad("1000 rows", rows(*[GOOD] * 1000), 413, (f"1000 rows exceed the batch limit of {MAX_BATCH}",)),
    Bad("valid JSON over the byte limit", rows(GOOD) + b" " * MAX_BODY, 413, (f"exceeds the limit of {MAX_BODY} bytes",)),
    Bad("garbage over the byte limit", b"\xff" * (MAX_BODY + 1), 413, (f"exceeds the limit of {MAX_BODY} bytes",)),
    Bad("huge string over the byte limit", rows({**GOOD, "user": "x" * MAX_BODY}), 413, (f"exceeds the limit of {MAX_BODY} bytes",)),
]

# -- 422: a bad value, generated per feature and place (rows[0] of 1, rows[2] of 3) ------------------
SURROGATE = "lone surrogate"
CATEGORY = "must be a string, number, boolean or null, got"
NUMBER = "must be a number or null, got"
HIST = "must be a list of items or a '|'-delimited string, got"
TAGS = "must be a list of items (strings or numbers) or null, got"
ITEMS = "items must be strings or numbers, got"
TOO_LARGE = "is too large to be a category"
BAD_VALUES: dict[str, list[tuple[str, Any, str]]] = {  # feature → (label, value, what the detail says)
    **{name: [
        ("object", {"id": 3}, f"{CATEGORY} object"), ("list", [1], f"{CATEGORY} list"), ("empty list", [], f"{CATEGORY} list"),
        ("400-digit integer", 10**400, f"a 401-digit integer {TOO_LARGE}"), ("negative 400-digit integer", -10**400, f"a 401-digit integer {TOO_LARGE}"),
        ("2**63", 2**63, TOO_LARGE), ("-2**63 - 1", -(2**63) - 1, TOO_LARGE), ("1e19", 1e19, f"the number 1e+19 {TOO_LARGE}"),
        ("-1e300", -1e300, TOO_LARGE), ("lone high surrogate", "\ud800x", SURROGATE), ("lone low surrogate", "\udfff", SURROGATE),
        ("trailing surrogate", "ok\udc80", SURROGATE),
    ] for name in ("user", "item")},
    "price": [
        ("numeric string", "12.5", f"{NUMBER} string"), ("empty string", "", f"{NUMBER} string"), ("NaN string", "NaN", f"{NUMBER} string"),
        ("true", True, f"{NUMBER} boolean"), ("false", False, f"{NUMBER} boolean"), ("list", [1.0], f"{NUMBER} list"),
        ("empty object", {}, f"{NUMBER} object"), ("object", {"v": 1}, f"{NUMBER} object"),
        ("400-digit integer", 10**400, "a 401-digit integer is beyond the largest float"),
        ("negative 400-digit integer", -10**400, "a 401-digit integer is beyond the largest float"),
        ("10**309", 10**309, "a 310-digit integer is beyond the largest float"),
    ],
    "hist": [
        ("number", 7, f"{HIST} number"), ("boolean", True, f"{HIST} boolean"), ("object", {"a": 1}, f"{HIST} object"),
        ("nested list", [[1]], f"{ITEMS} list"), ("object item", [{"a": 1}], f"{ITEMS} object"),
        ("400-digit item", [10**400], f"a 401-digit integer {TOO_LARGE}"), ("2**64 item", ["1", 2**64], TOO_LARGE),
        ("surrogate in the string", "1|\ud800", SURROGATE), ("surrogate item", ["\ud800"], SURROGATE), ("second item surrogate", ["3", "\udfff"], SURROGATE),
    ],
    "tags": [
        ("delimited string", "news|sport", f"{TAGS} string"), ("number", 7, f"{TAGS} number"), ("boolean", True, f"{TAGS} boolean"),
        ("object", {"a": 1}, f"{TAGS} object"), ("nested list", [[1]], f"{ITEMS} list"), ("object item", [{}], f"{ITEMS} object"),
        ("list of lists", [["a", "b"]], f"{ITEMS} list"), ("400-digit item", [10**400], f"a 401-digit integer {TOO_LARGE}"),
        ("-2**70 item", [-(2**70)], TOO_LARGE), ("surrogate item", ["\ud800"], SURROGATE), ("second item surrogate", ["news", "x\udbff"], SURROGATE),
    ],
}
VALUE_CASES = [
    Bad(f"{feature} {label} at rows[{at}]", with_value(feature, value, at, n), 422, (f"rows[{at}]", f"feature {feature!r}", says))
    for feature, values in BAD_VALUES.items() for label, value, says in values for at, n in ((0, 1), (2, 3))
] + [
    Bad(f"{feature} missing at rows[{at}]", with_value(feature, DELETE, at, n), 422, (f"rows[{at}]: missing feature {feature!r}",))
    for feature in GOOD for at, n in ((0, 1), (2, 3))
]

CASES = BODY_CASES + SHAPE_CASES + LIMIT_CASES + VALUE_CASES

# -- 200: hostile but valid: finite or null values, one prediction per row -----------------------------
ODD_ROWS: dict[str, Any] = {
    "unicode category": {"user": "üñí©ødé"}, "emoji category": {"user": "😀🚀"}, "CJK category": {"user": "用户"},
    "right-to-left category": {"user": "\u202eabc"}, "empty string category": {"user": ""}, "50 kB category": {"user": "x" * 50_000},
    "escaped NUL category": {"user": "a\u0000b"}, "boolean category": {"user": True}, "float category": {"item": 3.0},
    "largest int64 category": {"item": 2**63 - 1}, "smallest int64 category": {"item": -(2**63) + 1}, "1e18 category": {"item": 1e18},
    "null category": {"user": None}, "price 1e308 (log1p)": {"price": 1e308}, "price -1e308": {"price": -1e308},
    "price 10**300 integer": {"price": 10**300}, "price subnormal": {"price": 5e-324}, "price -0.0": {"price": -0.0},
    "price null": {"price": None}, "empty history": {"hist": ""}, "history of separators": {"hist": "|||"},
    "history of spaces": {"hist": " | "}, "10k-item history": {"hist": "|".join(["1"] * 10_000)},
    "history as integers": {"hist": [1, 2, 3]}, "history mixed": {"hist": [1, "2", 3.0]}, "null history": {"hist": None},
    "empty tags": {"tags": []}, "null tags": {"tags": None}, "null tag": {"tags": [None]}, "1000 tags": {"tags": ["news"] * 1000},
    "bias feature and unknown keys": {"pos": 1, "": 0, "k" * 1000: 1}, "surrogate in an unknown key": {"\ud800": 1},
}
ODD_BODIES: dict[str, bytes] = {
    "NaN price literal": rows(GOOD).replace(b"12.5", b"NaN"),
    "Infinity price literal": rows(GOOD).replace(b"12.5", b"Infinity"),
    "-Infinity price literal": rows(GOOD).replace(b"12.5", b"-Infinity"),
    "1e400 price literal": rows(GOOD).replace(b"12.5", b"1e400"),
    "duplicate key, last good": rows(GOOD).replace(b'{"user"', b'{"user": {"bad": 1}, "user"'),
    "the batch limit exactly": rows(*[GOOD] * MAX_BATCH),
    "whitespace around": b" \n" + rows(GOOD) + b"\n ",
    **{name: rows(GOOD, {**GOOD, **change}) for name, change in ODD_ROWS.items()},
}


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    """backend → an in-process client of the MMoE run (sequences, multiclass, fusion) or its ONNX export."""
    _, run_dir = shared_run(tmp_path_factory, "mmoe_sequence")
    directories = {"pytorch": run_dir, "onnx": export_run(run_dir, "onnx", tmp_path_factory.mktemp("fuzz-onnx")).directory}
    opened = {b: TestClient(create_app(directories[b], max_batch=MAX_BATCH, max_body_bytes=MAX_BODY, threads=1)) for b in BACKENDS}
    for client in opened.values():
        client.__enter__()
    yield opened
    for client in opened.values():
        client.__exit__(None, None, None)


def test_the_corpus_is_large_and_unambiguous():
    assert len(CASES) >= 150 and len({c.id for c in CASES}) == len(CASES)
    assert {c.status for c in CASES} == {400, 413, 422}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_body(clients, backend, case):
    response = clients[backend].post("/predict", content=case.body, headers={"content-type": "application/json"})
    detail = response.json()["detail"]
    assert response.status_code == case.status, detail
    for name in case.names:
        assert name in detail, detail
    assert "\n" not in detail and len(detail) < 400  # one line: no traceback, no echo of a huge value


def _finite_or_null(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite_or_null(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_or_null(v) for v in value)
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ODD_BODIES))
def test_hostile_but_valid_body(clients, backend, name):
    body = ODD_BODIES[name]
    response = clients[backend].post("/predict", content=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(json.loads(body)["rows"]) and _finite_or_null(predictions)


@pytest.fixture(scope="module")
def plain_numeric(tmp_path_factory):
    """backend → a client of a model whose numeric feature is only standardised (no log1p), and a row."""
    data, run_dir = shared_run(tmp_path_factory, "plain_numeric")
    directories = {"pytorch": run_dir, "onnx": export_run(run_dir, "onnx", tmp_path_factory.mktemp("plain-onnx")).directory}
    return {b: TestClient(create_app(directories[b], threads=1)) for b in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_value_the_scaling_overflows_is_a_422(plain_numeric, backend):
    """"price": 1e308 standardises beyond float32: was NaN probabilities and a 500 (NaN is not JSON)."""
    row = {"user": "u1", "item": 3, "price": 12.5}
    response = plain_numeric[backend].post("/predict", json={"rows": [row, {**row, "price": 1e308}]})
    assert response.status_code == 422
    assert response.json()["detail"] == ("rows[1]: feature 'price': the value is out of range "
                                         "(it overflows after the feature's transform and scaling)")
