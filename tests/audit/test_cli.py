"""`stockade audit ...` end to end on a real home (offline and with a running server)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from tests.audit.helpers import frames
from tests.conftest import STOCKADE, cli_json, run_cli, start_server

pytestmark = pytest.mark.xdist_group("audit-cli")


def test_offline_and_online_writers_share_one_chain(home: Path, tmp_path: Path) -> None:
    assert (home / "keys" / "audit_ed25519.key").stat().st_mode & 0o777 == 0o600
    cli_json("agent", "create", "alice", home=home)                 # offline: direct append under the lock
    server = start_server(home)
    try:
        key = server.agent("bob")                                    # online: through the admin socket
        assert "result" in server.invoke(key, "system.time")
        bad = server.invoke(key, "no.such.capability")
        assert bad["error"]
        live = cli_json("audit", "verify", home=home)                # verify while the server writes
        assert live["ok"]
        fresh = run_cli("audit", "checkpoint", "export", "--fresh", home=home).stdout
    finally:
        assert server.stop() == 0
    run_cli("agent", "revoke", "alice", home=home)
    recs = [json.loads(line) for line in run_cli("audit", "export", "--format", "jsonl", home=home).stdout.splitlines()]
    kinds = [r.get("kind", r.get("capability")) for r in recs]
    assert kinds == ["agent.created", "agent.created", "system.time", "no.such.capability", "agent.revoked"]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[3]["outcome"] == {"status": "error", "error": "CapabilityNotFound"}
    v = cli_json("audit", "verify", home=home)
    assert v["ok"] and v["last_seq"] == 5

    saved = tmp_path / "cp.json"
    saved.write_text(fresh)
    assert json.loads(fresh)["seq"] == 4
    ok = run_cli("audit", "verify", "--checkpoint", str(saved), home=home)
    assert "still contains" in ok.stdout

    # tail truncation: the chain alone still verifies, the exported checkpoint does not
    day = sorted((home / "audit").glob("????-??-??.log"))[-1]
    data = day.read_bytes()
    off, _ = frames(day)[-2]
    day.write_bytes(data[:off])                                      # drop seq 4 and 5
    (home / "audit" / "checkpoints.log").unlink()                    # and the local checkpoints
    assert cli_json("audit", "verify", home=home)["ok"]
    p = run_cli("audit", "verify", "--checkpoint", str(saved), "--json", home=home, check=False)
    assert p.returncode == 1
    f = json.loads(p.stdout)["findings"][0]
    assert f["cause"] == "checkpoint_truncated" and f["seq"] == 4
    human = run_cli("audit", "verify", "--checkpoint", str(saved), home=home, check=False)
    assert human.returncode == 1 and "checkpoint_truncated" in human.stdout and day.name in human.stdout

    forged = json.loads(fresh)
    forged["seq"] = 2
    saved.write_text(json.dumps(forged))
    p = run_cli("audit", "verify", "--checkpoint", str(saved), home=home, check=False)
    assert p.returncode == 1 and "bad signature" in p.stderr


def test_verify_names_file_and_seq_and_exits_1(home: Path) -> None:
    for name in ("a", "b", "c"):
        cli_json("agent", "create", name, home=home)
    day = sorted((home / "audit").glob("????-??-??.log"))[-1]
    data = bytearray(day.read_bytes())
    off, n = frames(day)[1]
    data[off + n - 40] ^= 1                                          # inside seq 2's hash
    day.write_bytes(bytes(data))
    p = run_cli("audit", "verify", "--json", home=home, check=False)
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["status"] == "broken"
    assert (out["findings"][0]["file"], out["findings"][0]["seq"]) == (day.name, 2)
    d = cli_json("doctor", home=home, check=False)
    assert d["checks"]["audit"]["status"] == "critical"
    assert run_cli("audit", "verify", "--since", "not-a-date", home=home, check=False).returncode == 2


def test_query_tail_and_follow(home: Path) -> None:
    for name in ("a", "b"):
        cli_json("agent", "create", name, home=home)
    q = cli_json("audit", "query", "--kind", "agent.created", "--agent", "b", home=home)["records"]
    assert [r["agent"] for r in q] == ["b"]
    assert cli_json("audit", "query", "--since", "2000-01-01", "--until", "2000-01-02", home=home)["records"] == []
    lines = run_cli("audit", "tail", "-n", "1", "--json", home=home).stdout.splitlines()
    assert [json.loads(x)["agent"] for x in lines] == ["b"]
    follow = subprocess.Popen([*STOCKADE, "audit", "tail", "-n", "0", "-f", "--json", "--home", str(home)],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        cli_json("agent", "create", "c", home=home)
        line = follow.stdout.readline()                              # type: ignore[union-attr]
        assert json.loads(line)["agent"] == "c"
    finally:
        follow.kill()
        follow.wait()
    r = cli_json("audit", "reindex", home=home)
    assert r["indexed"] == 3
