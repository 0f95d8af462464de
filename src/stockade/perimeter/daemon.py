"""`stockade perimeter serve`: the UDP listener that never replies, and the grant path.

Per datagram, cheapest check first: length, per-source and global budgets, replay lookup, then
the profile's MAC/AEAD check (verify.authenticate), the digest is recorded, then the time window,
source binding and ports (verify.authorize), and finally one nftables transaction. Every drop is
silent and counted by reason; log lines carry the source address and reason, never packet bytes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, TextIO

from stockade.core.home import Home, write_private
from stockade.perimeter import verify
from stockade.perimeter.codec import Reject
from stockade.perimeter.config import PerimeterConfig
from stockade.perimeter.nft import Firewall
from stockade.perimeter.replay import ReplayCache, packet_digest

MAX_DATAGRAM = 1500
MAX_SOURCES = 4096
LOG_LINES_PER_SECOND = 20


@dataclass
class Bucket:
    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class Limiter:
    """Token buckets per source (bounded LRU) and overall, in front of any crypto."""

    per_source: float
    total: float
    sources: OrderedDict[str, Bucket] = field(default_factory=OrderedDict)
    overall: Bucket | None = None

    def allow(self, src: str, now: float) -> str | None:
        if self.overall is None:
            self.overall = Bucket(self.total, self.total, self.total, now)
        b = self.sources.get(src)
        if b is None:
            b = Bucket(self.per_source, self.per_source * 2, self.per_source * 2, now)
            self.sources[src] = b
            if len(self.sources) > MAX_SOURCES:
                self.sources.popitem(last=False)
        else:
            self.sources.move_to_end(src)
        if not b.take(now):
            return "rate_source"
        if not self.overall.take(now):
            return "rate_total"
        return None


class Perimeter:
    """The decision shell: state (replay cache, limits, counters) around the pure verifier."""

    def __init__(self, cfg: PerimeterConfig, replay: ReplayCache, firewall: Firewall | None,
                 log: TextIO | None = None, clock: Any = time.time):
        self.cfg = cfg
        self.ring = verify.Keyring.from_config(cfg)
        self.replay = replay
        self.fw = firewall
        self.log = log
        self.clock = clock
        self.limiter = Limiter(cfg.rate_per_source, cfg.rate_total)
        self.counters: Counter[str] = Counter()
        self._log_window = (0, 0)

    def _emit(self, event: dict[str, Any], force: bool = False) -> None:
        if self.log is None:
            return
        sec = int(time.monotonic())
        start, n = self._log_window
        if sec != start:
            start, n = sec, 0
        if n >= LOG_LINES_PER_SECOND and not force:
            self._log_window = (start, n)
            return
        self._log_window = (start, n + 1)
        self.log.write(json.dumps(event) + "\n")
        self.log.flush()

    def handle(self, wire: bytes, src: str) -> str:
        """Process one datagram; returns "granted" or the drop reason. Never raises on input."""
        now = self.clock()
        outcome, info = self._decide(wire, src, now)
        self.counters[outcome] += 1
        self._emit({"event": "spa", "src": src, "outcome": outcome, **info}, force=outcome == "granted")
        return outcome

    def _decide(self, wire: bytes, src: str, now: float) -> tuple[str, dict[str, Any]]:
        if not 1 <= len(wire) <= MAX_DATAGRAM:
            return "bad_length", {}
        limited = self.limiter.allow(src, time.monotonic())
        if limited:
            return limited, {}
        digest = packet_digest(wire)
        if self.replay.seen(digest):
            return "replay", {}
        try:
            req = verify.authenticate(wire, self.ring)
        except Reject as r:
            return r.reason, {}
        info: dict[str, Any] = {"stanza": req.stanza, "profile": req.profile,
                                "requested_ip": str(req.allow_ip) if req.allow_ip else "0.0.0.0"}  # noqa: S104
        if not self.replay.add(digest, now):
            return "replay", info
        try:
            src_ip = verify.normalize_source(src)
            grant = verify.authorize(req, src_ip, now, self.ring.stanzas[req.stanza],
                                     grant_seconds=self.cfg.grant_seconds, max_skew=self.cfg.max_skew_seconds)
        except Reject as r:
            return r.reason, info
        if self.fw is not None:
            try:
                self.fw.grant(grant.ip, grant.ports, grant.seconds)
            except Exception as e:  # the door stays closed; say why
                info["error"] = type(e).__name__
                return "firewall_error", info
        info.update(ip=str(grant.ip), ports=[str(p) for p in grant.ports], seconds=grant.seconds)
        return "granted", info


class _Stop(Exception):  # noqa: N818
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


_reload_requested = False


def _request_reload(signum: int, frame: Any) -> None:
    global _reload_requested
    _reload_requested = True


def reload_config(perim: Perimeter, home: Home, log: TextIO) -> bool:
    """SIGHUP: re-read the stanzas (new keys from keygen); on any error keep the old config.

    The listen address, port and table rules stay as started (restart to change those)."""
    from stockade.core.errors import ConfigError
    from stockade.perimeter.config import load

    try:
        cfg = load(home.config_path)
        ring = verify.Keyring.from_config(cfg)
    except (ConfigError, ValueError) as e:
        errors = e.errors if isinstance(e, ConfigError) else [str(e)]
        log.write(json.dumps({"event": "reload_failed", "errors": errors}) + "\n")
        log.flush()
        return False
    perim.cfg, perim.ring = cfg, ring
    perim.limiter = Limiter(cfg.rate_per_source, cfg.rate_total)
    log.write(json.dumps({"event": "reloaded", "stanzas": len(cfg.stanzas)}) + "\n")
    log.flush()
    return True


def parse_listen(listen: str | None, cfg: PerimeterConfig) -> tuple[str, int]:
    """`ADDR`, `ADDR:PORT` or `[V6]:PORT` -> (addr, port); defaults from the config."""
    if not listen:
        return cfg.listen, cfg.port
    if listen.startswith("["):
        host, _, rest = listen[1:].partition("]")
        return host, int(rest.lstrip(":") or cfg.port)
    if listen.count(":") == 1:
        host, port = listen.split(":")
        return host, int(port)
    return listen, cfg.port


def serve(home: Home, cfg: PerimeterConfig, listen: str | None = None, *, out: TextIO = sys.stdout,
          log: TextIO = sys.stderr) -> None:
    """Install the table, listen, and remove the table only on a clean stop (SIGTERM/SIGINT)."""
    host, port = parse_listen(listen, cfg)
    conn = home.db()
    replay = ReplayCache(conn, cfg.max_skew_seconds, time.time())
    fw = Firewall()
    perim = Perimeter(cfg, replay, fw, log)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    global _reload_requested
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, _request_reload)
    state_path = home.run / "perimeter.json"
    clean = False
    try:
        fw.install(port, cfg.rate_per_source, cfg.rate_total)   # the door closes before we listen
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
        except OSError:
            fw.remove()
            raise
        sock.settimeout(1.0)
        started = time.time()
        out.write(json.dumps({"event": "ready", "listen": host, "port": sock.getsockname()[1],
                              "table": f"inet {fw.table}", "pid": os.getpid()}) + "\n")
        out.flush()
        last_maint = 0.0
        while True:
            try:
                wire, addr = sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                wire = None
            if wire is not None:
                try:
                    perim.handle(wire, addr[0])
                except Exception as e:  # a bug must not stop the listener nor open anything
                    perim.counters["internal_error"] += 1
                    log.write(json.dumps({"event": "error", "error": type(e).__name__}) + "\n")
            if _reload_requested:
                _reload_requested = False
                reload_config(perim, home, log)
            now = time.time()
            if now - last_maint >= 2.0:
                last_maint = now
                replay.prune(now)
                home.run.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_private(state_path, json.dumps({
                    "pid": os.getpid(), "listen": host, "port": port, "started_at": started,
                    "counters": dict(perim.counters), "replay_cache": len(replay)}))
    except _Stop:
        clean = True
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
        # Only a clean stop (SIGTERM/SIGINT) removes the table. A crash (an exception here, or
        # SIGKILL, which never runs this) leaves the drop policy in place: fail closed.
        if clean:
            fw.remove()
            state_path.unlink(missing_ok=True)
        conn.close()
        out.write(json.dumps({"event": "stopped", "counters": dict(perim.counters)}) + "\n")
        out.flush()
