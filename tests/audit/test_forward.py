"""Streaming the audit log to a SIEM over RFC 5425 (a real rsyslog over TLS) and to JSONL files.

Every record arrives at least once and in order; receiver and gateway are killed mid-stream and
nothing is missing by seq; a receiver without TLS is a clear health error and loses nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.audit.forward_helpers import Rsyslog, assert_continuous, free_port, make_ca, received
from tests.conftest import Server, cli_json, need, need_root, start_server

from stockade.audit.forward import octet_frame, rfc5424

pytestmark = pytest.mark.xdist_group("audit-forward")


def _configure(home: Path, forward: dict[str, Any]) -> None:
    p = home / "stockade.yaml"
    cfg = yaml.safe_load(p.read_text()) or {}
    cfg.setdefault("audit", {})["forward"] = {"retry_seconds": 0.3, "poll_seconds": 0.05, **forward}
    p.write_text(yaml.safe_dump(cfg))


def _syslog_cfg(certs: dict[str, Path], port: int, **extra: Any) -> dict[str, Any]:
    return {"syslog": {"host": "127.0.0.1", "port": port, "ca_file": str(certs["ca"]), "server_name": "localhost",
                       "connect_timeout": 2, "max_batch": 20, **extra}}


def _health(server: Server, key: str) -> dict[str, Any]:
    r = server.invoke(key, "system.health")["result"]["layers"]
    return dict(r.get("audit_forward", {}))


def _wait(cond: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Stream(threading.Thread):
    """Calls system.time again and again until stopped (failures while the gateway is down are expected)."""

    def __init__(self, server: Server, key: str):
        super().__init__(daemon=True)
        self.server, self.key, self.ok, self.stopped = server, key, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                if "result" in self.server.invoke(self.key, "system.time", timeout=10):
                    self.ok += 1
            except Exception:  # noqa: BLE001 - the gateway may be down on purpose
                time.sleep(0.1)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        start = self.ok
        _wait(lambda: self.ok >= start + n, timeout, f"{n} calls")


def _head_seq(home: Path) -> int:
    return int(cli_json("audit", "verify", home=home)["last_seq"])


def _caught_up(server: Server, key: str) -> bool:
    h = _health(server, key)
    sinks = h.get("sinks", {})
    return bool(sinks) and all(s["lag_records"] <= 1 and s["status"] == "ok" for s in sinks.values())


def test_rfc5424_message_and_octet_framing() -> None:
    rec = {"seq": 7, "ts": 1_767_229_200_000_000, "prev": b"\x01" * 32, "hash": b"\x02" * 32, "agent": "a",
           "kind": "agent.created"}
    msg = rfc5424(rec, facility=13, app="stockade", host="gw")
    assert msg.startswith(b"<110>1 2026-01-01T01:00:00.000000Z gw stockade ")
    assert b'[stockade@32473 seq="7" hash="' + b"02" * 32 + b'" prev="' + b"01" * 32 + b'"]' in msg
    body = json.loads(msg[msg.index(b"\xef\xbb\xbf") + 3:])
    assert body["seq"] == 7 and body["hash"] == "02" * 32
    framed = octet_frame(msg)
    n, _, rest = framed.partition(b" ")
    assert int(n) == len(rest) == len(msg)


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    need(os.path.exists("/usr/sbin/rsyslogd"), "rsyslog is not installed (scripts/install-system-deps.sh)")
    return make_ca(tmp_path / "tls")


def test_receiver_killed_mid_stream_loses_nothing(home: Path, tmp_path: Path, certs: dict[str, Path]) -> None:
    port = free_port()
    rs = Rsyslog(tmp_path / "rsyslog", certs, port)
    rs.start()
    _configure(home, _syslog_cfg(certs, port))
    server = start_server(home)
    stream: Stream | None = None
    try:
        key = server.agent("alice")
        stream = Stream(server, key)
        stream.start()
        stream.wait_for(40)
        rs.kill()                                   # the SIEM dies mid-stream
        stream.wait_for(40)                         # calls go on: never blocked by the sink
        _wait(lambda: _health(server, key).get("sinks", {}).get("syslog", {}).get("error") is not None,
              30, "the sink's error in health")
        rs.start()                                  # back on the same port
        stream.wait_for(40)
        stream.stopped.set()
        stream.join(30)
        _wait(lambda: _caught_up(server, key), 60, "the forwarder to catch up")
    finally:
        if stream is not None:
            stream.stopped.set()
        assert server.stop() == 0
        rs.stop()
    last = _head_seq(home)
    assert_continuous(received(rs.out), last - 2)   # the last few may be the health calls' own records


def test_gateway_killed_mid_stream_resumes_without_gaps(home: Path, tmp_path: Path,
                                                         certs: dict[str, Path]) -> None:
    port = free_port()
    rs = Rsyslog(tmp_path / "rsyslog", certs, port)
    rs.start()
    _configure(home, _syslog_cfg(certs, port))
    server = start_server(home)
    try:
        key = server.agent("alice")
        stream = Stream(server, key)
        stream.start()
        stream.wait_for(60)
        os.killpg(server.proc.pid, signal.SIGKILL)      # the gateway dies mid-stream
        server.proc.wait(10)
        stream.stopped.set()
        stream.join(30)
        before = set(received(rs.out))
        server = start_server(home)                     # restart: the cursor resumes
        _wait(lambda: _caught_up(server, key), 60, "the forwarder to catch up")
    finally:
        server.stop()
        rs.stop()
    cursor = json.loads((home / "audit" / "forward-syslog.cursor").read_text())
    got = received(rs.out)
    assert before <= set(got)
    assert cursor["seq"] >= _head_seq(home) - 2
    assert_continuous(got, cursor["seq"])


def test_receiver_without_tls_is_a_clear_error_and_nothing_is_lost(home: Path, tmp_path: Path,
                                                                    certs: dict[str, Path]) -> None:
    port = free_port()
    plain = socket.socket()
    plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    plain.bind(("127.0.0.1", port))
    plain.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:                          # a syslog receiver without TLS: takes bytes, says nothing
        plain.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = plain.accept()
                conns.append(c)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    _configure(home, _syslog_cfg(certs, port, connect_timeout=1))
    server = start_server(home)
    rs = Rsyslog(tmp_path / "rsyslog", certs, port)
    try:
        key = server.agent("alice")
        for _ in range(10):
            assert "result" in server.invoke(key, "system.time")      # calls are not held up
        _wait(lambda: "TLS handshake" in str(_health(server, key).get("sinks", {}).get("syslog", {}).get("error")),
              30, "a TLS handshake error in health")
        h = _health(server, key)
        assert h["status"] in ("degraded", "critical") and h["sinks"]["syslog"]["acknowledged_seq"] == 0
        stop.set()
        t.join(5)
        plain.close()
        for c in conns:
            c.close()
        rs.start()                                  # a real TLS receiver takes the port over
        _wait(lambda: _caught_up(server, key), 60, "the forwarder to catch up")
    finally:
        server.stop()
        rs.stop()
    got = received(rs.out)
    assert_continuous(got, max(got))
    assert max(got) >= 11


def test_jsonl_sink_full_disk_is_a_health_error_and_resumes(home: Path, tmp_path: Path) -> None:
    need_root()
    out = tmp_path / "jsonl"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k,mode=0700", "tmpfs", str(out)], check=True)
    server = None
    try:
        _configure(home, {"jsonl": {"dir": str(out), "max_bytes": 16384, "keep": 1000}})
        server = start_server(home)
        key = server.agent("alice")
        for _ in range(200):                                   # far more than 48 KiB of records
            assert "result" in server.invoke(key, "system.time")
        _wait(lambda: "disk full" in str(_health(server, key).get("sinks", {}).get("jsonl", {}).get("error")),
              30, "disk full in health")
        h = _health(server, key)["sinks"]["jsonl"]
        assert h["status"] in ("degraded", "critical") and h["lag_records"] > 0
        for p in out.iterdir():                                 # nothing half-written
            for line in p.read_text().splitlines():
                json.loads(line)
        subprocess.run(["mount", "-o", "remount,size=4m", str(out)], check=True)
        _wait(lambda: _caught_up(server, key), 60, "the JSONL sink to catch up")
    finally:
        if server is not None:
            server.stop()
        seqs = [json.loads(line)["seq"] for p in sorted(out.iterdir()) for line in p.read_text().splitlines()]
        subprocess.run(["umount", "-l", str(out)], check=False)
    last = _head_seq(home)
    uniq = sorted(set(seqs))
    assert uniq[0] == 1 and uniq[-1] >= last - 2 and uniq == list(range(1, uniq[-1] + 1))
    assert seqs == sorted(seqs)                                 # in order


def test_forwarder_checks_the_chain_of_what_it_sends(tmp_path: Path) -> None:
    from tests.audit.helpers import frames, write_log

    from stockade.audit.forward import ChainBreak, read_next

    audit = tmp_path / "audit"
    write_log(audit, None, days=("2026-01-01",), per_day=6)
    day = next(audit.glob("*.log"))
    limit = (day.name, day.stat().st_size)
    items = read_next(audit, None, limit, 100)
    assert [i.rec["seq"] for i in items] == [1, 2, 3, 4, 5, 6]
    assert [i.rec["seq"] for i in read_next(audit, items[2].after, limit, 100)] == [4, 5, 6]
    data = bytearray(day.read_bytes())
    off, n = frames(day)[3]
    tampered = bytearray(data)
    tampered[off + n - 40] ^= 1                                   # a byte of seq 4
    day.write_bytes(bytes(tampered))
    with pytest.raises(ChainBreak):
        read_next(audit, items[2].after, limit, 100)
    day.write_bytes(bytes(data[:off] + data[off + n:]))          # seq 4 deleted
    with pytest.raises(ChainBreak, match="expected seq 4"):
        read_next(audit, items[2].after, (day.name, len(data) - n), 100)


def test_lag_above_the_threshold_is_a_health_alert(tmp_path: Path) -> None:
    from tests.audit.helpers import write_log

    from stockade.audit.forward import Forwarder, Limits, SinkError

    audit = tmp_path / "audit"
    write_log(audit, None, days=("2026-01-01",), per_day=30)
    day = next(audit.glob("*.log"))

    class Down:
        name = "syslog"

        def send(self, items: list[Any]) -> None:
            raise SinkError("receiver down")

        def acknowledge(self) -> None: ...

        def reset(self) -> None: ...

    reports: list[tuple[dict[str, Any], bool]] = []
    f = Forwarder(audit, Down(), lambda: (30, day.name, day.stat().st_size),
                  lambda n, s, changed: reports.append((s, changed)), Limits(lag_alert_records=10))
    with pytest.raises(SinkError):
        f._step()
    f.error = "receiver down"
    s = f.status()
    assert s["status"] == "critical" and s["lag_records"] == 30 and s["acknowledged_seq"] == 0
    f.lim = Limits(lag_alert_records=100, lag_alert_seconds=1e12)
    assert f.status()["status"] == "degraded"                     # an error, not yet past the threshold
