"""Pack capabilities through the real gateway and sandbox: verified before every execution."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from tests.conftest import cli_json, cli_quick, need_root, quick_json, start_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "packs" / "textutils"
pytestmark = pytest.mark.xdist_group("packs-sandbox")


@pytest.fixture
def pack_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    need_root()
    home = tmp_path / "home"
    # setup through the CLI in this process (cli_quick): these commands are not under test here
    cli_quick("init", "--policy", "open", home=home)
    # An approval-required call answers ApprovalPending once its hold ends: 0.2 s, not the default 120 s.
    cfg = home / "stockade.yaml"
    cfg.write_text(cfg.read_text().replace("hold_seconds: 120", "hold_seconds: 0.2"))
    keys = quick_json("pack", "keygen", "--out", str(tmp_path / "pub"))
    quick_json("pack", "trust", keys["pub"], "--name", "example", home=home)
    d = tmp_path / "textutils"
    shutil.copytree(EXAMPLE, d)
    quick_json("pack", "sign", str(d), "--key", keys["key"])
    quick_json("pack", "install", str(d), home=home)
    s = start_server(home)
    try:
        yield s, d, keys
    finally:
        s.stop()


def _result(r: dict) -> dict:
    assert "result" in r, r
    return r["result"]


def test_pack_runs_in_the_sandbox(pack_server) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = pack_server
    key = s.agent("alice")
    names = {c["name"] for c in s.rpc(key, "capabilities.list").json()["result"]["capabilities"]}
    assert {"textutils.digest", "textutils.stats"} <= names
    out = _result(s.invoke(key, "textutils.digest", {"text": "hello"}))
    assert out == {"algorithm": "sha256", "hex": hashlib.sha256(b"hello").hexdigest()}
    assert _result(s.invoke(key, "textutils.stats", {"text": "a b\nc"})) == {"chars": 5, "words": 3, "lines": 2}
    bad = s.invoke(key, "textutils.digest", {"text": "x", "algorithm": "md5"})
    assert bad["error"]["data"]["type"] == "InvalidInput"


def _tamper(store: Path, rel: str, old: bytes, new: bytes) -> None:
    f = store / rel
    os.chmod(f, 0o644)
    f.write_bytes(f.read_bytes().replace(old, new))


def test_store_tampered_after_install_is_refused_at_the_next_call(pack_server) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = pack_server
    key = s.agent("alice")
    _result(s.invoke(key, "textutils.stats", {"text": "abc"}))
    store = s.home / "packs" / "textutils" / "1.0.0"
    _tamper(store, "src/stats.py", b'"chars": len(text)', b'"chars": 1337')
    r = s.invoke(key, "textutils.stats", {"text": "abc"})
    assert r["error"]["data"]["type"] == "PackSignatureInvalid", r
    assert r["error"]["data"]["file"] == "src/stats.py"
    # A planted bytecode cache beside the (restored) sources is refused too, never loaded.
    _tamper(store, "src/stats.py", b'"chars": 1337', b'"chars": len(text)')
    _result(s.invoke(key, "textutils.stats", {"text": "abc"}))
    os.chmod(store / "src", 0o755)
    (store / "src" / "__pycache__").mkdir()
    (store / "src" / "__pycache__" / "stats.cpython-311.pyc").write_bytes(b"\x00" * 32)
    r = s.invoke(key, "textutils.stats", {"text": "abc"})
    assert r["error"]["data"]["type"] == "PackSignatureInvalid" and "bytecode" in r["error"]["message"], r


def test_untrusted_publisher_stops_running(pack_server) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = pack_server
    key = s.agent("alice")
    _result(s.invoke(key, "textutils.stats", {"text": "abc"}))
    quick_json("pack", "untrust", "example", home=s.home)
    r = s.invoke(key, "textutils.stats", {"text": "abc"})
    assert r["error"]["data"]["type"] == "PackSignatureInvalid" and "no longer trusted" in r["error"]["message"]


def test_swapping_a_file_while_calls_run_never_executes_unverified_bytes(pack_server) -> None:  # type: ignore[no-untyped-def]
    """A racer flips src/stats.py between the signed version and an evil one as fast as it can."""
    s, _, _ = pack_server
    key = s.agent("alice")
    f = s.home / "packs" / "textutils" / "1.0.0" / "src" / "stats.py"
    os.chmod(f, 0o644)
    good = f.read_bytes()
    evil = good.replace(b'"chars": len(text)', b'"chars": -666')
    assert evil != good
    stop = threading.Event()

    def racer() -> None:
        tmp = f.with_name(".swap")
        while not stop.is_set():
            for data in (evil, good):
                tmp.write_bytes(data)
                os.replace(tmp, f)      # atomic swaps: every read sees one whole version
                time.sleep(0.0005)

    t = threading.Thread(target=racer)
    t.start()
    outcomes = {"ok": 0, "refused": 0}
    try:
        for _ in range(40):
            r = s.invoke(key, "textutils.stats", {"text": "abc"})
            if "result" in r:
                assert r["result"]["chars"] == 3, "unverified bytes were executed"
                outcomes["ok"] += 1
            else:
                assert r["error"]["data"]["type"] == "PackSignatureInvalid", r
                outcomes["refused"] += 1
    finally:
        stop.set()
        t.join()
        f.write_bytes(good)
    assert outcomes["refused"] > 0, outcomes  # the racer did get in; it was caught every time


def test_pack_default_tier_is_a_floor(pack_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An org policy that says autonomous cannot loosen a pack that asks for approval."""
    s, d, keys = pack_server
    y = (d / "pack.yaml").read_text().replace("version: 1.0.0", "version: 1.1.0")
    y = y.replace("    default_tier: autonomous\n    side_effects: false\n    input:\n      type: object\n"
                  "      required: [text]\n      additionalProperties: false\n      properties:\n"
                  "        text: {type: string, maxLength: 1000000}\n    output:\n      type: object\n"
                  "      required: [chars",
                  "    default_tier: approval_required\n    side_effects: false\n    input:\n      type: object\n"
                  "      required: [text]\n      additionalProperties: false\n      properties:\n"
                  "        text: {type: string, maxLength: 1000000}\n    output:\n      type: object\n"
                  "      required: [chars")
    assert "approval_required" in y
    (d / "pack.yaml").write_text(y)
    quick_json("pack", "sign", str(d), "--key", keys["key"])
    out = quick_json("pack", "install", str(d), home=s.home)
    assert out["live"] is True   # the running server registered it through the admin socket
    key = s.agent("bob")
    r = s.invoke(key, "textutils.stats", {"text": "abc"})
    assert r["error"]["data"]["type"] in ("ApprovalPending",), r
    assert _result(s.invoke(key, "textutils.digest", {"text": "abc"}))["algorithm"] == "sha256"


def test_mcp_clients_see_new_tools(pack_server) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    s, _, _ = pack_server
    key = s.agent("carol")
    seen: list[str] = []

    async def handler(message) -> None:  # type: ignore[no-untyped-def]
        seen.append(type(getattr(message, "root", message)).__name__ + str(message)[:200])

    async def go() -> None:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        async with Client(streamable_http_client(f"{s.url}/mcp", http_client=http), mode="legacy",
                          message_handler=handler) as c:
            before = {t.name for t in (await c.list_tools()).tools}
            assert "textutils__digest" in before
            await asyncio.to_thread(cli_json, "pack", "remove", "textutils", home=s.home)
            for _ in range(100):
                if any("list_changed" in x for x in seen):
                    break
                await asyncio.sleep(0.05)
            after = {t.name for t in (await c.list_tools()).tools}
            assert "textutils__digest" not in after
            assert any("list_changed" in x for x in seen), seen

    asyncio.run(go())
