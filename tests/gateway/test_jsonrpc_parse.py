"""The pure JSON-RPC layer: parsing never raises, and every malformed input has its code."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.core.errors import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR
from stockade.gateway import jsonrpc
from stockade.gateway.jsonrpc import Invalid, Request, parse


def test_single_request() -> None:
    entries, batch = parse(b'{"jsonrpc":"2.0","id":7,"method":"capabilities.list"}')
    assert not batch
    assert entries == [Request("capabilities.list", {}, 7)]


def test_notification_has_no_id() -> None:
    (r,), _ = parse(b'{"jsonrpc":"2.0","method":"x"}')
    assert isinstance(r, Request) and r.is_notification


def test_parse_error_and_invalid_requests() -> None:
    assert parse(b"{nope")[0][0].code == PARSE_ERROR
    assert parse(b"\xff\xfe")[0][0].code == PARSE_ERROR
    assert parse(b"[]")[0][0].code == INVALID_REQUEST
    assert parse(b"42")[0][0].code == INVALID_REQUEST
    assert parse(b'{"jsonrpc":"1.0","id":1,"method":"a"}')[0][0].code == INVALID_REQUEST
    assert parse(b'{"jsonrpc":"2.0","id":1,"method":""}')[0][0].code == INVALID_REQUEST
    assert parse(b'{"jsonrpc":"2.0","id":{},"method":"a"}')[0][0].code == INVALID_REQUEST
    assert parse(b'{"jsonrpc":"2.0","id":true,"method":"a"}')[0][0].code == INVALID_REQUEST
    assert parse(b'{"jsonrpc":"2.0","id":1,"method":"a","params":[1]}')[0][0].code == INVALID_PARAMS
    assert parse(b'{"jsonrpc":"2.0","id":1,"method":"a","extra":1}')[0][0].code == INVALID_REQUEST


def test_batch_keeps_order_and_isolates_bad_entries() -> None:
    body = json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "a"}, 5,
                       {"jsonrpc": "2.0", "id": 3, "method": "c"}]).encode()
    entries, batch = parse(body)
    assert batch
    assert [type(e) for e in entries] == [Request, Invalid, Request]
    assert entries[0].id == 1 and entries[2].id == 3


def test_batch_size_is_capped() -> None:
    body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "a"} for i in range(jsonrpc.MAX_BATCH + 1)]).encode()
    (e,), _ = parse(body)
    assert isinstance(e, Invalid) and e.code == INVALID_REQUEST


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_never_raise(body: bytes) -> None:
    entries, _ = parse(body)
    assert entries and all(isinstance(e, Request | Invalid) for e in entries)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fuzz_json_documents(doc: object) -> None:
    entries, batch = parse(json.dumps(doc).encode())
    for e in entries:
        if isinstance(e, Request):
            assert isinstance(e.method, str) and e.method and isinstance(e.params, dict)
        else:
            assert e.code in (PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS)
    if batch:
        assert isinstance(doc, list) and len(entries) == len(doc)
