"""`${secret:NAME}` references: positions, substitution, signing, scrub encodings (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.core.errors import StockadeError
from stockade.vault import refs

HTTP, PROC = "network.http_request", "process.run"


def test_no_scan_when_capability_does_not_allow_secrets() -> None:
    p = refs.plan("filesystem.write", False, {"path": "a.sh", "content": "echo ${secret:x}"})
    assert not p.names


def test_http_header_refs() -> None:
    p = refs.plan(HTTP, True, {"url": "https://api.example.com/v1?a=1", "headers": {
        "Authorization": "Bearer ${secret:tok}", "X-Two": "${secret:a}-${secret:b}"}})
    assert p.names == {"tok", "a", "b"} and p.text == p.names
    assert p.target == refs.Target("https", "api.example.com", 443, "GET", "/v1", "a=1")


@pytest.mark.parametrize("args,where", [
    ({"url": "https://h.example.com/${secret:x}"}, "url"),
    ({"url": "https://h.example.com/", "body": "k=${secret:x}"}, "body"),
    ({"url": "https://h.example.com/", "headers": {"${secret:x}": "v"}}, "headers"),
])
def test_http_refs_elsewhere_are_invalid(args: dict, where: str) -> None:
    with pytest.raises(StockadeError) as e:
        refs.plan(HTTP, True, args)
    assert e.value.type == "InvalidInput" and where in e.value.message


def test_process_env_only() -> None:
    p = refs.plan(PROC, True, {"argv": ["sh", "-c", "echo $K"], "env": {"K": "${secret:k}"}})
    assert p.names == {"k"} and p.target is None
    for bad in ({"argv": ["echo", "${secret:k}"]}, {"argv": ["x"], "stdin": "${secret:k}"},
                {"argv": ["x"], "cwd": "${secret:k}"}):
        with pytest.raises(StockadeError) as e:
            refs.plan(PROC, True, bad)
        assert e.value.type == "InvalidInput"


def test_generic_secret_capability_anywhere() -> None:
    p = refs.plan("pack.thing", True, {"a": {"b": ["${secret:one}", "x"]}, "c": "${secret:two}"})
    assert p.names == {"one", "two"}
    out = refs.substitute("pack.thing", {"a": {"b": ["${secret:one}", "x"]}, "c": "${secret:two}"},
                          {"one": "1", "two": "2"})
    assert out == {"a": {"b": ["1", "x"]}, "c": "2"}


@pytest.mark.parametrize("ref", ["${secret:}", "${secret: x}", "${secret:a\nb}"])
def test_bad_reference_names(ref: str) -> None:
    with pytest.raises(StockadeError) as e:
        refs.plan(PROC, True, {"argv": ["x"], "env": {"K": ref}})
    assert e.value.type == "InvalidInput"


def test_substitute_does_not_mutate_and_disables_redirects() -> None:
    args = {"url": "https://h.example.com/", "headers": {"A": "x ${secret:k} y"}, "follow_redirects": True}
    out = refs.substitute(HTTP, args, {"k": "V"})
    assert out["headers"] == {"A": "x V y"} and out["follow_redirects"] is False
    assert args["headers"] == {"A": "x ${secret:k} y"} and args["follow_redirects"] is True


def test_sign_message_and_signature() -> None:
    args = {"url": "https://api.example.com/v3/order?symbol=BTC&ts=1", "method": "POST", "body": '{"q":1}',
            "headers": {"X-TS": "1700000000", "x-sig": "agent-supplied"},
            "sign": {"secret": "hk", "header": "X-Sig"}}
    p = refs.plan(HTTP, True, args)
    assert p.names == {"hk"} and p.text == frozenset()
    msg = refs.sign_message(p.sign, p.target, args)  # type: ignore[arg-type]
    assert msg == b'POST/v3/order?symbol=BTC&ts=1{"q":1}'
    sig = refs.hmac_sha256(b"key", msg, "hex")
    assert sig == hmac.new(b"key", msg, hashlib.sha256).hexdigest()
    out = refs.substitute(HTTP, args, {}, ("X-Sig", sig))
    assert "sign" not in out and out["headers"] == {"X-TS": "1700000000", "X-Sig": sig}   # replaced, not doubled
    args["sign"] = {"secret": "${secret:hk}", "header": "S", "encoding": "base64",
                    "payload": ["header:x-ts", "method", "path", "query", "body", "literal:!"], "separator": "|"}
    p = refs.plan(HTTP, True, args)
    assert refs.sign_message(p.sign, p.target, args) == b'1700000000|POST|/v3/order|symbol=BTC&ts=1|{"q":1}|!'  # type: ignore[arg-type]
    want = base64.b64encode(hmac.new(b"k", b"m", hashlib.sha256).digest()).decode()
    assert refs.hmac_sha256(b"k", b"m", "base64") == want


@pytest.mark.parametrize("sign", [
    "hk", {"secret": "hk"}, {"secret": "hk", "header": "bad header"},
    {"secret": "hk", "header": "S", "algorithm": "md5"},
    {"secret": "hk", "header": "S", "payload": ["nope"]},
    {"secret": "hk", "header": "S", "payload": ["header:missing"]},
    {"secret": "hk", "header": "S", "payload": ["header:A"]}, {"secret": "hk", "header": "S", "extra": 1},
])
def test_bad_sign_blocks(sign) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StockadeError) as e:
        refs.plan(HTTP, True, {"url": "https://h.example.com/", "headers": {"A": "${secret:z}"}, "sign": sign})
    assert e.value.type == "InvalidInput"


@pytest.mark.parametrize("url", ["https://a@h.example.com/", "https://h.example.com\\@evil.com/", "ftp://h/",
                                 "https:///x", "https://h.example.com /"])
def test_ambiguous_urls_refused(url: str) -> None:
    with pytest.raises(StockadeError):
        refs.plan(HTTP, True, {"url": url, "headers": {"A": "${secret:z}"}})


def test_encodings_cover_common_forms() -> None:
    v = "s3cr3t/value+with=chars"
    forms = refs.encodings(v)
    b = v.encode()
    for f in (v, b.hex(), b.hex().upper(), base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode(),
              quote(v, safe="")):
        assert f in forms
    # base64 of the secret embedded at any offset of a longer stream contains one of the cores
    for prefix in (b"", b"u", b"us", b"user:"):
        for suffix in (b"", b"!", b"!!", b"!!!"):
            stream = base64.b64encode(prefix + b + suffix).decode()
            assert any(f in stream for f in forms if len(f) >= 8), (prefix, suffix)
    assert refs.encodings("") == []
    assert refs.encodings("ab") == ["ab"]          # short values: no over-eager derived forms


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                    | st.sampled_from(["${secret:a}", "${secret:}", "x${secret:b}y", "${secret:c"]),
                    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
                    max_leaves=12))
@settings(max_examples=200)
def test_plan_fuzz_structured_errors_only(args) -> None:  # type: ignore[no-untyped-def]
    for cap in (HTTP, PROC, "pack.x"):
        a = args if isinstance(args, dict) else {"v": args}
        try:
            p = refs.plan(cap, True, a)
        except StockadeError as e:
            assert e.type in ("InvalidInput", "EgressDenied")
            continue
        out = refs.substitute(cap, a, {n: "V" for n in p.names})
        if cap == "pack.x":
            assert "${secret:a}" not in repr(out) and "${secret:b}" not in repr(out)
