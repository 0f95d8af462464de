"""verify.authorize rules, the SQLite replay cache, and the daemon's decision shell (no kernel)."""

from __future__ import annotations

import base64
import ipaddress
import os
import sqlite3
from pathlib import Path

import pytest

from stockade.core import db
from stockade.perimeter import fwknop, native, verify
from stockade.perimeter.codec import Port, Reject, SpaRequest
from stockade.perimeter.config import PerimeterConfig, Stanza
from stockade.perimeter.daemon import Perimeter, parse_listen
from stockade.perimeter.replay import ReplayCache, packet_digest

NOW = 1_800_000_000.0
A = ipaddress.IPv4Address("192.0.2.10")
STANZA = Stanza(name="s", native_key=base64.b64encode(os.urandom(32)).decode(), open_ports=["tcp/22", "udp/51820"],
                max_grant_seconds=120)


def req(**kw) -> SpaRequest:  # type: ignore[no-untyped-def]
    base = {"profile": "native", "stanza": "s", "allow_ip": A, "ports": (Port("tcp", 22),), "timestamp": NOW,
            "client_timeout": 0}
    return SpaRequest(**{**base, **kw})


def auth(r: SpaRequest, src=A, stanza: Stanza = STANZA, now: float = NOW):  # type: ignore[no-untyped-def]
    return verify.authorize(r, src, now, stanza, grant_seconds=30, max_skew=120)


def test_grant_is_for_the_source_and_requested_allowed_ports() -> None:
    g = auth(req(ports=(Port("tcp", 22), Port("udp", 51820))))
    assert (g.ip, g.ports, g.seconds) == (A, (Port("tcp", 22), Port("udp", 51820)), 30)


@pytest.mark.parametrize(("r", "src", "reason"), [
    (req(timestamp=NOW - 121), A, "stale"),
    (req(timestamp=NOW + 121), A, "future"),
    (req(allow_ip=ipaddress.IPv4Address("192.0.2.11")), A, "address_mismatch"),
    (req(), ipaddress.IPv4Address("198.51.100.1"), "address_mismatch"),
    (req(allow_ip=None), A, "zero_address"),
    (req(ports=(Port("tcp", 23),)), A, "port_not_allowed"),
    (req(ports=(Port("tcp", 22), Port("tcp", 23))), A, "port_not_allowed"),
    (req(ports=()), A, "port_not_allowed"),
])
def test_authorize_refusals(r: SpaRequest, src, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Reject) as e:
        auth(r, src)
    assert e.value.reason == reason


def test_window_edges_and_opt_ins() -> None:
    assert auth(req(timestamp=NOW - 120)).seconds == 30
    assert auth(req(timestamp=NOW + 120)).seconds == 30
    opted = STANZA.model_copy(update={"allow_source_ip": True})
    assert auth(req(allow_ip=None), stanza=opted).ip == A
    assert auth(req(client_timeout=60)).seconds == 60
    assert auth(req(client_timeout=600)).seconds == 120           # capped
    no_cap = STANZA.model_copy(update={"max_grant_seconds": 0})
    assert auth(req(client_timeout=600), stanza=no_cap).seconds == 30   # not allowed to choose


def test_ipv4_mapped_sources_normalize() -> None:
    assert verify.normalize_source("::ffff:192.0.2.10") == A


def test_replay_cache_persists_and_prunes(tmp_path: Path) -> None:
    path = tmp_path / "stockade.db"
    conn = db.connect(path)
    c = ReplayCache(conn, 120, NOW)
    d = packet_digest(b"x")
    assert not c.seen(d) and c.add(d, NOW) and c.seen(d)
    assert not c.add(d, NOW)                                     # second insert: a replay
    conn.close()
    conn = db.connect(path)
    assert ReplayCache(conn, 120, NOW + 60).seen(d)              # survives a restart
    c2 = ReplayCache(conn, 120, NOW + 251)                       # beyond 2 x 120 + margin
    assert not c2.seen(d)
    assert conn.execute("SELECT count(*) FROM perimeter_replay").fetchone()[0] == 0
    conn.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


class FakeClock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


class RecordingFirewall:
    """Stands in for nftables only in these decision-shell tests (the netns tests use the real one)."""

    def __init__(self) -> None:
        self.grants: list[tuple] = []

    def grant(self, ip, ports, seconds) -> None:  # type: ignore[no-untyped-def]
        self.grants.append((ip, ports, seconds))


@pytest.fixture
def shell(tmp_path: Path):  # type: ignore[no-untyped-def]
    k, h, n = os.urandom(32), os.urandom(64), os.urandom(32)
    cfg = PerimeterConfig.model_validate({"rate_per_source": 5, "stanzas": [{
        "name": "s", "key_base64": base64.b64encode(k).decode(), "hmac_key_base64": base64.b64encode(h).decode(),
        "native_key": base64.b64encode(n).decode()}]})
    conn = db.connect(tmp_path / "stockade.db")
    fw = RecordingFirewall()
    clock = FakeClock()
    p = Perimeter(cfg, ReplayCache(conn, 120, NOW), fw, None, clock)  # type: ignore[arg-type]
    yield p, fw, clock, (k, h, native.NativeKey.from_secret(n))
    conn.close()


def test_shell_grants_once_and_counts_drops(shell) -> None:  # type: ignore[no-untyped-def]
    p, fw, clock, (k, h, nk) = shell
    w = native.encode(nk, str(A), ["tcp/22"], timestamp=NOW)
    assert p.handle(w, str(A)) == "granted"
    assert p.handle(w, str(A)) == "replay"
    assert p.handle(fwknop.encode(k, h, str(A), ["tcp/22"], timestamp=int(NOW)), str(A)) == "granted"
    assert p.handle(b"garbage", "198.51.100.7") == "bad_length"
    assert p.handle(b"\x01" + os.urandom(60), "198.51.100.7") == "unknown_key"
    stale = native.encode(nk, str(A), ["tcp/22"], timestamp=NOW - 500)
    assert p.handle(stale, str(A)) == "stale"
    assert len(fw.grants) == 2 and fw.grants[0] == (A, (Port("tcp", 22),), 30)
    assert p.counters["granted"] == 2 and p.counters["replay"] == 1


def test_shell_rate_limits_a_flooding_source_not_others(shell) -> None:  # type: ignore[no-untyped-def]
    p, fw, clock, (_k, _h, nk) = shell
    outcomes = [p.handle(os.urandom(200), "198.51.100.7") for _ in range(50)]
    assert "rate_source" in outcomes
    assert p.handle(native.encode(nk, str(A), ["tcp/22"], timestamp=NOW), str(A)) == "granted"


def test_parse_listen() -> None:
    cfg = PerimeterConfig()
    assert parse_listen(None, cfg) == ("0.0.0.0", 62201)
    assert parse_listen("10.0.0.1", cfg) == ("10.0.0.1", 62201)
    assert parse_listen("10.0.0.1:5000", cfg) == ("10.0.0.1", 5000)
    assert parse_listen("[::]:5000", cfg) == ("::", 5000)


def test_db_schema_registered(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "x.db")
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='perimeter_replay'").fetchone()
    conn.close()
    assert isinstance(conn, sqlite3.Connection)
