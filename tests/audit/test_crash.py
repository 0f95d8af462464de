"""SIGKILL a real `stockade serve` during a storm of JSON-RPC calls, restart, and check the log."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.audit.helpers import frames
from tests.conftest import cli_json, run_cli, start_server

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("audit-crash")]


def storm(url: str, key: str, stop: threading.Event, acked: list[int], sent: list[int]) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "capabilities.invoke", "params": {"name": "system.time"}}
    n_acked = n_sent = 0
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
        while not stop.is_set():
            n_sent += 1
            try:
                r = c.post(f"{url}/rpc", json=body)
            except httpx.HTTPError:
                break
            if "result" in r.json():
                n_acked += 1
    acked.append(n_acked)
    sent.append(n_sent)


def test_sigkill_during_write_storm_loses_no_acknowledged_call(home: Path) -> None:
    key = cli_json("agent", "create", "storm", home=home)["key"]
    server = start_server(home)
    stop = threading.Event()
    acked: list[int] = []
    sent: list[int] = []
    threads = [threading.Thread(target=storm, args=(server.url, key, stop, acked, sent)) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.proc.kill()                       # SIGKILL: no shutdown, no checkpoint, no flush
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    total_acked, total_sent = sum(acked), sum(sent)
    assert total_acked > 50, "the storm did not get going"

    # A power cut could also leave half a record at the end: simulate it on top of the kill.
    day = sorted((home / "audit").glob("????-??-??.log"))[-1]
    off, n = frames(day)[-1]
    data = day.read_bytes()
    with open(day, "ab") as f:
        f.write(data[off:off + n // 2])
    assert cli_json("audit", "verify", home=home, check=False)["status"] == "torn"

    server = start_server(home)              # recovery: the torn tail is moved aside
    try:
        assert "result" in server.invoke(key, "system.time")
    finally:
        assert server.stop() == 0

    v = cli_json("audit", "verify", home=home)
    assert v["ok"] and v["status"] == "intact" and v["start"] == "genesis", v
    assert v["anchored_through"] == v["last_seq"]          # clean shutdown wrote a checkpoint
    assert any("torn" in n for n in v["notes"])
    q = cli_json("audit", "query", "--agent", "storm", "--capability", "system.time", "--outcome", "ok",
                 "--limit", "1000000", home=home)["records"]
    ok_calls = len(q) - 1                                   # minus the call after the restart
    assert total_acked <= ok_calls <= total_sent, (total_acked, ok_calls, total_sent)
    assert len({r["call"] for r in q}) == len(q)           # no duplicates
    kinds = [r.get("kind") for r in cli_json("audit", "query", "--kind", "audit.torn_recovered",
                                             home=home)["records"]]
    assert kinds == ["audit.torn_recovered"]
    run_cli("audit", "reindex", home=home)
    again = cli_json("audit", "query", "--agent", "storm", "--kind", "call", "--limit", "1000000", home=home)
    assert len(again["records"]) == len(q)
