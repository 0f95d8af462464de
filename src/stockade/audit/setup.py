"""Audit wiring: the key at `init`, the writer in `serve`, admin commands, doctor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from stockade.audit import checkpoint as cp
from stockade.audit.forward import Forwarder, JsonlFiles, Limits, SyslogTLS
from stockade.audit.verify import day_files, verify_dir
from stockade.audit.writer import AuditWriter, Settings
from stockade.core import admin
from stockade.core.admin import AdminCommand
from stockade.core.errors import err
from stockade.core.home import Home
from stockade.core.wiring import Gateway


def init(home: Home, policy_template: str) -> list[str]:
    home.audit_dir.mkdir(mode=0o700, exist_ok=True)
    return cp.create_keys(home.keys)


async def start(gw: Gateway) -> None:
    home = gw.home
    home.audit_dir.mkdir(mode=0o700, exist_ok=True)
    if not (home.keys / cp.KEY_NAME).exists():
        cp.create_keys(home.keys)
    writer = AuditWriter(home.audit_dir, home.keys, Settings.of(gw.config.audit), bus=gw.bus,
                         health=gw.pipeline.health)
    await writer.open()
    gw.audit = writer
    gw.pipeline.audit = writer      # the pipeline's audit hook: `record` returns once durable
    fwd = gw.config.audit.forward
    if fwd is not None:
        writer.forwarders = _forwarders(gw, writer, fwd)
        for f in writer.forwarders:
            f.start()


def _forwarders(gw: Gateway, writer: AuditWriter, cfg: Any) -> list[Forwarder]:
    """One thread per configured sink, reading the day files up to the writer's durable end."""
    loop = asyncio.get_running_loop()
    health = gw.pipeline.health
    sinks: dict[str, dict[str, Any]] = {}

    def head() -> tuple[int, str | None, int]:
        d = writer.durable                     # one attribute read: a consistent (seq, file, size)
        return d.seq, d.file, d.size

    def report(name: str, status: dict[str, Any], changed: bool) -> None:
        sinks[name] = status
        order = {"ok": 0, "degraded": 1, "critical": 2}
        worst = max((s["status"] for s in sinks.values()), key=lambda x: order.get(x, 2), default="ok")
        health["audit_forward"] = {"status": worst, "sinks": dict(sinks)}
        if changed:
            sev = "critical" if status["status"] == "critical" else "warning" if status["status"] != "ok" else "info"
            loop.call_soon_threadsafe(_publish, gw, {"sink": name, **status}, sev)

    out: list[Forwarder] = []
    for sink_cfg, make in ((cfg.syslog, SyslogTLS), (cfg.jsonl, JsonlFiles)):
        if sink_cfg is None:
            continue
        try:
            sink = make(sink_cfg, gw.home.root)
        except (OSError, ValueError) as e:
            raise err("Internal", f"audit.forward.{make.name}: {e}") from None
        lim = Limits(cfg.lag_alert_records, cfg.lag_alert_seconds, cfg.poll_seconds, cfg.retry_seconds,
                     getattr(sink_cfg, "max_batch", 2000))
        out.append(Forwarder(gw.home.audit_dir, sink, head, report, lim))
    return out


def _publish(gw: Gateway, data: dict[str, Any], severity: str) -> None:
    with contextlib.suppress(Exception):
        gw.bus.publish("health.audit_forward", data, severity)


async def stop(gw: Gateway) -> None:
    if gw.audit is not None:
        for f in gw.audit.forwarders:
            await asyncio.get_running_loop().run_in_executor(None, f.stop)
        await gw.audit.close()


def _writer(gw: Gateway) -> AuditWriter:
    w = gw.audit
    if w is None:
        raise err("Internal", "the audit writer is not running")
    return w


async def _append(gw: Gateway, args: dict[str, Any]) -> Any:
    rec = args.get("record")
    if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str):
        raise err("InvalidInput", "audit.append needs a record object with a text 'kind'")
    seq = await _writer(gw).record(rec)
    return {"seq": seq}


async def _head(gw: Gateway, args: dict[str, Any]) -> Any:
    return _writer(gw).status()


async def _checkpoint(gw: Gateway, args: dict[str, Any]) -> Any:
    c = await _writer(gw).checkpoint("manual")
    if c is None:
        raise err("InvalidInput", "nothing to checkpoint yet (empty log) or no audit key")
    return c


ADMIN_COMMANDS = {"audit.append": AdminCommand(_append), "audit.head": AdminCommand(_head),
                  "audit.checkpoint": AdminCommand(_checkpoint)}


def doctor(home: Home) -> dict[str, Any]:
    """Quick check: key present; the newest two day files verify; checkpoints consistent with them."""
    out: dict[str, Any] = {}
    pub = cp.load_public(home.keys)
    if not (home.keys / cp.KEY_NAME).exists() or pub is None:
        out["audit_key"] = {"status": "degraded", "error": "no audit signing key (run stockade init)"}
    else:
        out["audit_key"] = {"status": "ok"}
    files = day_files(home.audit_dir)
    t0 = time.monotonic()
    recent = files[-2:]
    limit = None
    try:
        if home.admin_sock.exists():
            head = admin.call(home, "audit.head", timeout=5)
            limit = (head["file"], int(head["size"])) if head.get("file") else None
    except Exception:   # doctor reports; it does not fail on a busy or stopping server
        limit = None
    if limit:
        recent = [p for p in recent if p.name <= limit[0]]
    r = verify_dir(home.audit_dir, pub, only=recent, limit=limit)
    check: dict[str, Any] = {"status": "ok" if r.ok else "degraded" if r.torn_only else "critical",
                             "files_checked": [p.name for p in recent], "records": r.records, "last_seq": r.last_seq,
                             "anchored_through": r.anchored_through, "seconds": round(time.monotonic() - t0, 3)}
    if r.findings:
        check["findings"] = [f.to_dict() for f in r.findings[:5]]
        check["hint"] = "stockade audit verify"
    out["audit"] = check
    return out
