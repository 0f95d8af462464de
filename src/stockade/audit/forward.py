"""Forwarding the audit log to a SIEM (syslog over TLS) and to rotating JSONL files.

Each sink has its own forwarder, a thread that reads the day files (never the write path: a call
never waits for a sink) up to the durable end the writer reports, checks the chain of every
record it is about to send (the record's own hash, `seq` one more than the last, `prev` the last
`hash`), sends a batch, and moves its cursor only once the sink has **acknowledged** the batch:

- syslog (RFC 5425 has no application-level acknowledgement): a batch is sent on one TLS
  connection, then the connection is closed with a TLS close_notify and the forwarder waits for
  the receiver to close its side. A receiver reads a TLS stream in order, so it has read every
  message of the batch before it sees the close_notify; the peer's close is the acknowledgement.
  A batch that is not acknowledged (receiver gone, reset, timeout) is sent again: at least once,
  in order, and the receiver can tell a repeat or a gap by `seq`.
- JSONL: written, flushed and fsynced; a failed write (full disk) is cut back to the last whole
  line and retried later.

The cursor (`audit/forward-<sink>.cursor`: seq, hash, file, offset) is replaced atomically and
fsynced after every acknowledged batch, so a restart of the gateway resumes after the last
acknowledged record; anything sent but not acknowledged is sent again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from stockade.audit import checkpoint as cp
from stockade.audit.record import FRAME, MAX_FRAME, BadRecord, check, check_fast, jsonable
from stockade.audit.verify import day_files


class ChainBreak(Exception):
    """What the forwarder would send does not continue the chain it sent: it stops sending."""


class SinkError(Exception):
    """The sink did not take (or acknowledge) a batch; it is sent again after `retry_seconds`."""


# -- the cursor -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    seq: int                 # the last acknowledged record (0: none yet)
    hash: bytes
    file: str | None         # where the next record is read
    offset: int

    def to_json(self) -> str:
        return json.dumps({"v": 1, "seq": self.seq, "hash": self.hash.hex(), "file": self.file,
                           "offset": self.offset}, sort_keys=True)


def load_cursor(path: Path) -> Cursor | None:
    try:
        d = json.loads(path.read_text())
        return Cursor(int(d["seq"]), bytes.fromhex(d["hash"]), d["file"], int(d["offset"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise ChainBreak(f"{path.name} is damaged ({e}); move it away to forward from the start again") from None


def save_cursor(path: Path, c: Cursor) -> None:
    """Replace the cursor atomically and durably (a crash leaves the old or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, c.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    cp.fsync_dir(path.parent)


# -- reading what comes next (verified) -----------------------------------------------------------
@dataclass(frozen=True)
class Item:
    rec: dict[str, Any]
    after: Cursor            # the cursor once this record is acknowledged


def read_next(audit_dir: Path, cur: Cursor | None, limit: tuple[str, int] | None, max_n: int) -> list[Item]:
    """Up to `max_n` records after `cur`, never past `limit` (the writer's durable end), each
    checked: its own hash, and that it continues the chain from `cur`. ChainBreak otherwise."""
    if limit is None:
        return []
    out: list[Item] = []
    files = [p for p in day_files(audit_dir) if p.name <= limit[0]]
    if cur is not None and cur.file is not None:
        files = [p for p in files if p.name >= cur.file]
    seq, prev = (cur.seq, cur.hash) if cur is not None else (None, None)
    for p in files:
        start = cur.offset if cur is not None and p.name == cur.file else 0
        end = limit[1] if p.name == limit[0] else None
        try:
            with open(p, "rb") as f:
                f.seek(start)
                data = f.read() if end is None else f.read(max(end - start, 0))
        except FileNotFoundError:
            continue
        o = 0
        while o + 4 <= len(data) and len(out) < max_n:
            ln = FRAME.unpack_from(data, o)[0]
            if ln == 0 or ln > MAX_FRAME or o + 4 + ln > len(data):
                raise ChainBreak(f"{p.name} offset {start + o}: the framing is broken (run `stockade audit verify`)")
            body = data[o + 4:o + 4 + ln]
            rec = check_fast(body)
            if rec is None:
                try:
                    rec = check(body)
                except BadRecord as e:
                    raise ChainBreak(f"{p.name} offset {start + o} (after seq {seq}): {e.cause}: {e.detail}") from None
            if seq is not None and rec["seq"] != seq + 1:
                raise ChainBreak(f"{p.name}: expected seq {seq + 1}, found {rec['seq']} (records missing or "
                                 "reordered; pruned before they were forwarded?)")
            if prev is not None and rec["prev"] != prev:
                raise ChainBreak(f"{p.name} seq {rec['seq']}: prev does not link to the hash of seq {seq}")
            o += 4 + ln
            seq, prev = rec["seq"], rec["hash"]
            out.append(Item(rec, Cursor(rec["seq"], rec["hash"], p.name, start + o)))
        if len(out) >= max_n:
            break
    return out


def to_json(rec: dict[str, Any]) -> str:
    """The record as one line of JSON (bytes as hex): what both sinks carry."""
    return json.dumps(jsonable(rec), separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


# -- sinks ----------------------------------------------------------------------------------------
class Sink(Protocol):
    name: str

    def send(self, items: list[Item]) -> None: ...

    def acknowledge(self) -> None:
        """Return once everything sent is acknowledged; SinkError otherwise."""

    def reset(self) -> None: ...


def rfc5424(rec: dict[str, Any], *, facility: int, app: str, host: str) -> bytes:
    """One RFC 5424 message: severity from the record, SD with seq/hash/prev, the record as JSON."""
    sev = 4 if str(rec.get("kind", "")).startswith(("audit.", "auth.")) else 6
    ts = rec.get("ts")
    stamp = datetime.fromtimestamp(ts / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(ts, int) else "-"
    msgid = str(rec.get("kind") or "call").replace(" ", "_")[:32] or "-"
    sd = (f'[stockade@32473 seq="{rec["seq"]}" hash="{rec["hash"].hex()}" prev="{rec["prev"].hex()}"]')
    head = f"<{facility * 8 + sev}>1 {stamp} {host or '-'} {app} {os.getpid()} {_ascii(msgid)} {sd} "
    return head.encode("ascii") + b"\xef\xbb\xbf" + to_json(rec).encode("utf-8", "backslashreplace")


def _ascii(s: str) -> str:
    return "".join(c if 33 <= ord(c) < 127 else "_" for c in s) or "-"


def octet_frame(msg: bytes) -> bytes:
    """RFC 5425 §4.3 octet-counting: MSG-LEN SP SYSLOG-MSG."""
    return str(len(msg)).encode() + b" " + msg


class SyslogTLS:
    """RFC 5425 sink; `acknowledge` closes the connection and waits for the receiver's close."""

    name = "syslog"

    def __init__(self, cfg: Any, home_root: Path):
        self.cfg = cfg
        self.ctx = ssl.create_default_context(cafile=_path(cfg.ca_file, home_root))
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.cert_file:
            self.ctx.load_cert_chain(_path(cfg.cert_file, home_root),
                                     _path(cfg.key_file, home_root) if cfg.key_file else None)
        self.sock: ssl.SSLSocket | None = None
        self.host = socket.gethostname()

    def _connect(self) -> ssl.SSLSocket:
        t = self.cfg.connect_timeout
        try:
            raw = socket.create_connection((self.cfg.host, self.cfg.port), timeout=t)
        except OSError as e:
            raise SinkError(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {e}") from None
        try:
            s = self.ctx.wrap_socket(raw, server_hostname=self.cfg.server_name or self.cfg.host)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise SinkError(f"TLS handshake with {self.cfg.host}:{self.cfg.port} failed ({e}): is it a syslog "
                            "receiver with TLS, and does its certificate match ca_file and server_name?") from None
        s.settimeout(t)
        return s

    def send(self, items: list[Item]) -> None:
        if self.sock is None:
            self.sock = self._connect()
        data = b"".join(octet_frame(rfc5424(it.rec, facility=self.cfg.facility, app=self.cfg.app_name,
                                             host=self.host)) for it in items)
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as e:
            self.reset()
            raise SinkError(f"sending to {self.cfg.host}:{self.cfg.port} failed: {e}") from None

    def acknowledge(self) -> None:
        s, self.sock = self.sock, None
        if s is None:
            return
        try:
            raw = s.unwrap()                      # our close_notify, then the receiver's
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            raw = None                            # the receiver closed after reading everything: acknowledged
        except (OSError, ssl.SSLError) as e:
            s.close()
            raise SinkError(f"{self.cfg.host}:{self.cfg.port} did not acknowledge the batch ({e}); sending it "
                            "again") from None
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.close()
        else:
            s.close()

    def reset(self) -> None:
        s, self.sock = self.sock, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.close()


class JsonlFiles:
    """Rotating JSONL files `audit-NNNNNN.jsonl` (the newest is written); `keep` files are kept."""

    name = "jsonl"

    def __init__(self, cfg: Any, home_root: Path):
        self.dir = Path(_path(cfg.dir, home_root))
        self.max_bytes, self.keep = cfg.max_bytes, cfg.keep
        self.fd: int | None = None
        self.size = 0

    def _files(self) -> list[Path]:
        return sorted(self.dir.glob("audit-[0-9][0-9][0-9][0-9][0-9][0-9].jsonl"))

    def _open(self, need: int) -> int:
        if self.fd is not None and self.size + need <= self.max_bytes:
            return self.fd
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = self._files()
        path = files[-1] if files else self.dir / "audit-000001.jsonl"
        if self.fd is not None or (path.exists() and path.stat().st_size + need > self.max_bytes and
                                   path.stat().st_size > 0):
            path = self.dir / f"audit-{int(path.name[6:12]) + 1:06d}.jsonl"
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.fd, self.size = fd, os.fstat(fd).st_size
        for old in self._files()[:-self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()
        return fd

    def send(self, items: list[Item]) -> None:
        data = "".join(to_json(it.rec) + "\n" for it in items).encode("utf-8", "backslashreplace")
        try:
            fd = self._open(len(data))
        except OSError as e:
            self.reset()
            raise SinkError(f"cannot open a JSONL file in {self.dir}: {e}") from None
        start = self.size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)         # never leave half a line: the batch is written again later
            self.reset()
            why = "disk full" if e.errno in (28, 122) else str(e)
            raise SinkError(f"writing {self.dir}: {why}; nothing is lost, the records are written again "
                            "once it works") from None
        self.size = start + len(data)

    def acknowledge(self) -> None:
        return None      # fsynced in send

    def reset(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _path(p: str, root: Path) -> str:
    return str(Path(p) if os.path.isabs(p) else root / p)


# -- the forwarder thread -------------------------------------------------------------------------
@dataclass
class Limits:
    lag_alert_records: int = 10_000
    lag_alert_seconds: float = 300.0
    poll_seconds: float = 0.2
    retry_seconds: float = 2.0
    max_batch: int = 2000


class Forwarder:
    """One sink's forwarder thread. `head()` gives the writer's durable (seq, file, size);
    `report(name, status, alert)` is called (from this thread) whenever the status changes."""

    def __init__(self, audit_dir: Path, sink: Sink, head: Callable[[], tuple[int, str | None, int]],
                 report: Callable[[str, dict[str, Any], bool], None], limits: Limits):
        self.audit_dir, self.sink, self.head, self.report, self.lim = audit_dir, sink, head, report, limits
        self.cursor_path = audit_dir / f"forward-{sink.name}.cursor"
        self.cursor: Cursor | None = None
        self.error: str | None = None
        self.broken: str | None = None
        self.sent = 0
        self.oldest_unsent_us: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"audit-forward-{sink.name}", daemon=True)
        self._last: dict[str, Any] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.sink.reset()

    def status(self) -> dict[str, Any]:
        seq = self.head()[0]
        done = self.cursor.seq if self.cursor else 0
        lag = max(seq - done, 0)
        lag_s = max(time.time() - self.oldest_unsent_us / 1e6, 0.0) if self.oldest_unsent_us and lag else 0.0
        st = "critical" if self.broken or (self.error and (lag >= self.lim.lag_alert_records or
                                                            lag_s >= self.lim.lag_alert_seconds)) \
            else "degraded" if self.error or lag >= self.lim.lag_alert_records or lag_s >= self.lim.lag_alert_seconds \
            else "ok"
        out: dict[str, Any] = {"status": st, "acknowledged_seq": done, "log_seq": seq, "lag_records": lag,
                               "lag_seconds": round(lag_s, 3), "sent": self.sent}
        if self.broken or self.error:
            out["error"] = self.broken or self.error
        return out

    def _publish(self) -> None:
        s = self.status()
        changed = s["status"] != self._last.get("status") or s.get("error") != self._last.get("error")
        self._last = s
        self.report(self.sink.name, s, changed)

    def _run(self) -> None:
        try:
            self.cursor = load_cursor(self.cursor_path)
        except ChainBreak as e:
            self.broken = str(e)
        while not self._stop.is_set():
            if self.broken:
                self._publish()
                self._stop.wait(self.lim.retry_seconds)
                continue
            try:
                moved = self._step()
                self.error = None
            except ChainBreak as e:
                self.broken = str(e)
                moved = False
            except SinkError as e:
                self.error = str(e)
                self.sink.reset()
                self._publish()
                self._stop.wait(self.lim.retry_seconds)
                continue
            except Exception as e:  # noqa: BLE001 - a forwarder bug must show in health, not kill the thread
                self.error = f"{type(e).__name__}: {e}"
                self.sink.reset()
                self._publish()
                self._stop.wait(self.lim.retry_seconds)
                continue
            self._publish()
            if not moved:
                self._stop.wait(self.lim.poll_seconds)

    def _step(self) -> bool:
        seq, file, size = self.head()
        if file is None or (self.cursor is not None and self.cursor.seq >= seq):
            self.oldest_unsent_us = None
            return False
        items = read_next(self.audit_dir, self.cursor, (file, size), self.lim.max_batch)
        if not items:
            return False
        self.oldest_unsent_us = items[0].rec["ts"]
        self.sink.send(items)
        self.sink.acknowledge()
        self.cursor = items[-1].after
        save_cursor(self.cursor_path, self.cursor)
        self.sent += len(items)
        self.oldest_unsent_us = None
        return True
