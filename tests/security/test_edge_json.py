"""The edge's bounded JSON parse (issue 13 item 1): depth, sizes, non-finite numbers, Unicode.

Pure tests plus hypothesis: whatever bytes arrive, the parse either returns a document every
later stage can encode (JSON without NaN, UTF-8, within the audit depth) or raises a structured
`ParseError`/`InvalidInput`; nothing else escapes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.core.errors import StockadeError
from stockade.core.limits import MAX_CONTAINER_ITEMS, MAX_JSON_DEPTH, MAX_RECORD_DEPTH, MAX_STRING_BYTES
from stockade.edge.bounded import parse_json


def refused(body: bytes | str) -> StockadeError:
    with pytest.raises(StockadeError) as ei:
        parse_json(body)
    return ei.value


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def test_ordinary_requests_parse_like_json_loads() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"capabilities.invoke","params":{"name":"x","arguments":{"f":1.5}}}'
    assert parse_json(body) == json.loads(body)
    assert parse_json(body.decode()) == json.loads(body)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E+400", "0.1e310",
                                     "1" + "0" * 400 + ".0"])
def test_non_finite_numbers_are_refused_anywhere(literal: str) -> None:
    for body in (literal, f"[{literal}]", f'{{"a":{{"b":[1,{literal}]}}}}'):
        e = refused(body)
        assert e.type == "InvalidInput" and e.data["reason"] == "non-finite"


def test_depth_is_bounded_and_never_a_recursion_error() -> None:
    assert parse_json(nested(MAX_JSON_DEPTH)) is not None
    assert parse_json('{"a":' * (MAX_JSON_DEPTH - 1) + '{}' + "}" * (MAX_JSON_DEPTH - 1)) is not None
    for depth in (MAX_JSON_DEPTH + 1, 410, 600, 5000, 200_000):
        e = refused(nested(depth))
        assert e.type == "InvalidInput" and e.data["reason"] == "depth", depth
    e = refused('{"a":' * 600 + "1" + "}" * 600)
    assert e.data["reason"] == "depth"
    assert MAX_JSON_DEPTH < MAX_RECORD_DEPTH


def test_sizes_are_bounded() -> None:
    e = refused(json.dumps({"s": "x" * (MAX_STRING_BYTES + 1)}))
    assert e.data["reason"] == "size"
    e = refused(json.dumps({"s": "é" * (MAX_STRING_BYTES // 2 + 1)}))      # bytes, not characters
    assert e.data["reason"] == "size"
    assert parse_json(json.dumps({"s": "x" * MAX_STRING_BYTES}))
    e = refused(json.dumps(list(range(MAX_CONTAINER_ITEMS + 1))))
    assert e.data["reason"] == "size"
    e = refused(json.dumps({str(i): 0 for i in range(MAX_CONTAINER_ITEMS + 1)}))
    assert e.data["reason"] == "size"
    e = refused("1" * 5000)                                                 # beyond Python's digit limit
    assert e.type == "InvalidInput"


def test_unicode_must_be_valid() -> None:
    assert parse_json('"\\ud83d\\ude00"') == "\U0001f600"                  # a pair is fine
    for body in ('"\\ud800"', '["a", "\\uDFFF"]', '{"\\udabc": 1}', '"x\\ud83dy"'):
        e = refused(body)
        assert e.type == "InvalidInput" and e.data["reason"] == "encoding", body
    assert refused(b'"\xed\xa0\x80"').type == "ParseError"                # surrogate in raw UTF-8
    assert refused(b'"\xff"').type == "ParseError"
    assert refused(b"\xff\xfe{\x00}\x00").type == "ParseError"             # UTF-16 is not accepted


def test_syntax_errors_are_parse_errors() -> None:
    for body in (b"", b"{", b"{oops", b"[1,]", b"nul"):
        assert refused(body).type == "ParseError"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_every_bounded_document_round_trips(doc: Any) -> None:
    text = json.dumps(doc)
    assert parse_json(text) == json.loads(text)
    assert parse_json(text.encode()) == json.loads(text)


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


tokens = st.sampled_from(["[", "]", "{", "}", ",", ":", '"a"', "1", "-0.5e3", "NaN", "Infinity", "1e999",
                          "null", "true", '"\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', " ", "\\"])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.lists(tokens, max_size=200).map("".join),
                 st.integers(0, 3000).map(nested)))
def test_any_input_is_a_bounded_document_or_a_structured_refusal(body: bytes | str) -> None:
    try:
        doc = parse_json(body)
    except StockadeError as e:
        assert e.type in ("ParseError", "InvalidInput")
        return
    assert _depth(doc) <= MAX_JSON_DEPTH
    json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")   # every later encoder succeeds
