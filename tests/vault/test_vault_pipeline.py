"""The vault as the pipeline's SecretsHook, with the real Pipeline and test-only echo capabilities.

The echo capabilities carry the real names (`network.http_request`, `process.run`) in a private
registry, so the vault's position and scope rules are exercised exactly; they run in-process and
hand back whatever they received (raw and encoded), which is the worst case for leaks. The
full-stack canary through the real sandbox and a real HTTP server is in test_vault_canary.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from stockade.capabilities.registry import Registry, parse_definitions
from stockade.core import agents
from stockade.core.errors import StockadeError, err
from stockade.core.home import Home
from stockade.gateway.pipeline import MemoryAudit, Pipeline
from stockade.gateway.service import init_home
from stockade.vault import keys
from stockade.vault.runtime import Vault
from stockade.vault.store import VaultFile

PASS = bytearray(b"pipeline test passphrase")
CANARY = "CANARY-7f3a9c1e-d00d/feed+beef=cafe"

DEFS = """
capabilities:
  - name: network.http_request
    purpose: test echo
    when_to_use: tests
    secrets: true
    side_effects: true
    input:
      type: object
      properties:
        url: {type: string}
        method: {type: string}
        headers: {type: object, additionalProperties: {type: string}}
        body: {type: string}
        follow_redirects: {type: boolean}
        fail: {type: boolean}
        sign: {type: object}
    output: {type: object}
  - name: process.run
    purpose: test echo
    when_to_use: tests
    secrets: true
    side_effects: true
    input:
      type: object
      properties:
        argv: {type: array, items: {type: string}}
        env: {type: object, additionalProperties: {type: string}}
    output: {type: object}
  - name: test.plain
    purpose: test echo without secrets
    when_to_use: tests
    input: {type: object}
    output: {type: object}
"""


RECEIVED: list[dict[str, Any]] = []


def _echo(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Return everything, also encoded, like a server echoing a header and a program printing env."""
    RECEIVED.append(args)
    text = json.dumps(args, sort_keys=True)
    vals = [v for v in (args.get("headers") or {}).values()] + [v for v in (args.get("env") or {}).values()]
    enc = {"b64": [base64.b64encode(v.encode()).decode() for v in vals],
           "hex": [v.encode().hex() for v in vals],
           "url": [quote(v, safe="") for v in vals],
           "basic": [base64.b64encode(b"user:" + v.encode()).decode() for v in vals]}
    if args.get("fail"):
        raise err("NetworkError", f"server said: {text} {enc}", echoed=vals)
    return {"args": args, "text": text, "enc": enc}


def build(tmp_path: Path) -> tuple[Pipeline, Vault, Any]:
    home = Home.at(tmp_path / "home")
    init_home(home)
    defs = parse_definitions(DEFS, "test-defs.yaml")
    reg = Registry(defs, {"network.http_request": _echo, "process.run": _echo, "test.plain": _echo})
    db = home.db()
    key = agents.create(db, "alice")
    f = VaultFile(home.vault_path)
    kb = keys.KeyBuffer()
    f.init(bytearray(PASS), kb)
    f.put(kb, "api", CANARY.encode(), ["network.http_request"], ["api.example.com", "http://127.0.0.1:8080"],
          all_agents=True)
    f.put(kb, "envtok", b"ENVTOKEN-0123456789abcdef", ["process.run"], [], all_agents=True, disclose_to_agent=True)
    f.put(kb, "hk", b"hmac signing key", ["network.http_request"], ["api.example.com"], all_agents=True)
    kb.close()
    f.close()
    v = Vault(home.vault_path)
    p = Pipeline(home, reg, db, secrets=v, audit=MemoryAudit())
    caller = p.authenticate(key, "sess-1", "test")
    return p, v, caller


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def call(p: Pipeline, caller: Any, cap: str, args: dict[str, Any]) -> dict[str, Any] | StockadeError:
    try:
        return await p.invoke(caller, cap, args)
    except StockadeError as e:
        return e


def test_sealed_then_unsealed_then_sealed(tmp_path: Path) -> None:
    p, v, caller = build(tmp_path)
    args = {"url": "https://api.example.com/x", "headers": {"X-Custom": "Bearer ${secret:api}"}}

    async def go() -> None:
        r = await call(p, caller, "network.http_request", args)
        assert isinstance(r, StockadeError) and r.type == "VaultSealed"
        ok = await call(p, caller, "network.http_request", {"url": "https://api.example.com/x"})
        assert isinstance(ok, dict)                                 # no secret: keeps working while sealed
        v.unseal(bytearray(PASS))
        r = await call(p, caller, "network.http_request", args)
        assert isinstance(r, dict)
        assert r["args"]["headers"]["X-Custom"] == "Bearer ${secret:api}"
        assert r["args"]["follow_redirects"] is False
        v.seal()
        r = await call(p, caller, "network.http_request", args)
        assert isinstance(r, StockadeError) and r.type == "VaultSealed"

    run(go())
    outcomes = [rec["outcome"] for rec in p.audit.records if rec.get("phase") != "decision"]  # type: ignore[attr-defined]
    assert [o.get("error") for o in outcomes] == ["VaultSealed", None, None, "VaultSealed"]


NIS = "SecretNotInScope"


@pytest.mark.parametrize("cap,args,etype", [
    ("network.http_request", {"url": "https://evil.example.net/", "headers": {"A": "${secret:api}"}}, NIS),
    ("network.http_request", {"url": "http://api.example.com/", "headers": {"A": "${secret:api}"}}, NIS),
    ("network.http_request", {"url": "http://127.0.0.1:8081/", "headers": {"A": "${secret:api}"}}, NIS),
    ("network.http_request", {"url": "https://api.example.com/", "headers": {"A": "${secret:envtok}"}},
     "SecretNotInScope"),
    ("process.run", {"argv": ["env"], "env": {"K": "${secret:api}"}}, "SecretNotInScope"),
    ("process.run", {"argv": ["echo", "${secret:envtok}"]}, "InvalidInput"),
    ("process.run", {"argv": ["env"], "env": {"K": "${secret:nope}"}}, "SecretNotFound"),
    ("network.http_request", {"url": "https://api.example.com/${secret:api}"}, "InvalidInput"),
])
def test_out_of_scope_is_refused_and_audited(tmp_path: Path, cap: str, args: dict, etype: str) -> None:
    p, v, caller = build(tmp_path)
    v.unseal(bytearray(PASS))
    r = run(call(p, caller, cap, args))
    assert isinstance(r, StockadeError) and r.type == etype, r
    rec = p.audit.records[-1]  # type: ignore[attr-defined]
    assert rec["outcome"] == {"status": "error", "error": etype} and rec["capability"] == cap
    assert CANARY not in repr(p.audit.records) and CANARY not in r.message  # type: ignore[attr-defined]
    v.seal()


def test_placeholders_are_text_for_capabilities_without_secrets(tmp_path: Path) -> None:
    p, v, caller = build(tmp_path)
    v.unseal(bytearray(PASS))
    r = run(call(p, caller, "test.plain", {"content": "echo ${secret:api}"}))
    assert isinstance(r, dict) and r["args"]["content"] == "echo ${secret:api}"
    v.seal()


def test_hmac_signing_in_gateway(tmp_path: Path) -> None:
    p, v, caller = build(tmp_path)
    v.unseal(bytearray(PASS))
    args = {"url": "https://api.example.com/v3/order?sym=BTC", "method": "POST", "body": '{"q":1}',
            "sign": {"secret": "hk", "header": "X-Signature"}}
    r = run(call(p, caller, "network.http_request", args))
    assert isinstance(r, dict), r
    want = hmac.new(b"hmac signing key", b'POST/v3/order?sym=BTC{"q":1}', hashlib.sha256).hexdigest()
    assert r["args"]["headers"] == {"X-Signature": want}
    assert "sign" not in r["args"] and "hmac signing key" not in json.dumps(r)
    # the signing key is host-scoped like any other secret
    bad = run(call(p, caller, "network.http_request", {**args, "url": "http://127.0.0.1:8080/"}))
    assert isinstance(bad, StockadeError) and bad.type == "SecretNotInScope"
    v.seal()


def test_last_used_is_recorded(tmp_path: Path) -> None:
    p, v, caller = build(tmp_path)
    v.unseal(bytearray(PASS))
    run(call(p, caller, "process.run", {"argv": ["env"], "env": {"K": "${secret:envtok}"}}))
    v.flush_used()
    rows = {r.name: r for r in v.file.rows()}
    assert rows["envtok"].last_used is not None and rows["api"].last_used is None
    v.seal()


def _forms(value: str) -> list[str]:
    b = value.encode()
    return [value, b.hex(), b.hex().upper(), base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode(),
            base64.b64encode(b).decode().rstrip("="), quote(value, safe=""),
            base64.b64encode(b"user:" + b).decode()[8:-4]]


def test_canary_1000_calls_never_leak(tmp_path: Path) -> None:
    """1,000 uses through the pipeline: no raw/base64/hex/url form in results, errors, audit or events."""
    p, v, caller = build(tmp_path)
    v.unseal(bytearray(PASS))
    seen: list[str] = []
    events: list[Any] = []

    async def go() -> None:
        sub = p.bus.subscribe(maxsize=100_000)
        for i in range(1000):
            if i % 2 == 0:
                args = {"url": "http://127.0.0.1:8080/echo", "headers": {"X-Custom": "${secret:api}",
                                                                          "X-N": str(i)}, "fail": i % 10 == 0}
                r = await call(p, caller, "network.http_request", args)
            else:
                r = await call(p, caller, "process.run",
                               {"argv": ["printenv", "TOK"], "env": {"TOK": "${secret:envtok}"}})
            seen.append(json.dumps(r.to_dict() if isinstance(r, StockadeError) else r))
            seen.append(str(r))
        while (ev := await sub.get(timeout=0)) is not None:
            events.append(ev)

    run(go())
    seen.extend(json.dumps(ev.to_dict(), default=str) for ev in events)
    seen.append(repr(p.audit.records))  # type: ignore[attr-defined]
    blob = "\n".join(seen)
    assert "${secret:api}" in blob and "${secret:envtok}" in blob   # the echo did try to return the values
    for value in (CANARY, "ENVTOKEN-0123456789abcdef"):
        for f in _forms(value):
            assert f not in blob, f"leaked form {f!r}"
    v.seal()


def test_odd_names_and_values_are_used_faithfully(tmp_path: Path) -> None:
    p, v, caller = build(tmp_path)
    name, value = 'odd name \u2713 "q" $x {', "va l\\ue \"'$HOME ${secret:api} \u00e9\U0001f511\x01\t"
    v.unseal(bytearray(PASS))
    v.put(name, value.encode(), ["process.run"], None, all_agents=True, disclose_to_agent=True)
    RECEIVED.clear()
    r = run(call(p, caller, "process.run", {"argv": ["x"], "env": {"A": "<${secret:" + name + "}>"}}))
    assert isinstance(r, dict), r
    assert RECEIVED[-1]["env"]["A"] == f"<{value}>"          # exact, and no second substitution pass
    assert value not in json.dumps(r)
    v.put("binary", b"\xff\xfe\x00", ["process.run"], None, all_agents=True, disclose_to_agent=True)
    r = run(call(p, caller, "process.run", {"argv": ["x"], "env": {"A": "${secret:binary}"}}))
    assert isinstance(r, StockadeError) and r.type == "InvalidInput" and "UTF-8" in r.message
    v.seal()
