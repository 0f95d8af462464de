"""SIGHUP: re-read stockade.yaml and the policy files now (`systemctl reload stockade`).

The policy is recompiled at once (the same path as the file watcher: a policy that does not load
leaves the last good one in force, `policy.rejected`). stockade.yaml is validated; a file that does
not load changes nothing (`config.rejected`, logged with its file:line errors). Of a valid file,
the sections read while serving (`LIVE`) take effect now; a change to any other section (ports,
addresses, which parts run, sandbox and audit settings, ...) is built into objects at start-up and
needs a restart, which the log line and the audit record say by name. Nothing here can stop the
gateway: a reload that fails is logged and the gateway serves on with what it had.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from stockade.core import sdnotify
from stockade.core.config import Config
from stockade.core.errors import ConfigError
from stockade.core.logs import log
from stockade.core.wiring import Gateway
from stockade.policy import setup as policy_setup

LIVE = frozenset({"security"})   # read on every use (security.txt), so a new value applies at once


def changed_sections(old: Config, new: Config) -> list[str]:
    """Top-level sections whose value differs; pure."""
    a, b = old.model_dump(), new.model_dump()
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


@dataclass
class Reloader:
    """One per `serve`: remembers stockade.yaml as it was at start (command-line port overrides
    are not file changes) and runs one reload at a time (a second SIGHUP during one waits)."""

    gw: Gateway
    on_file: Config
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def of(cls, gw: Gateway) -> Reloader:
        try:
            on_file = gw.home.config()
        except ConfigError:
            on_file = gw.config
        return cls(gw, on_file)

    async def reload(self) -> dict[str, Any]:
        async with self.lock:
            sdnotify.reloading()
            out: dict[str, Any]
            try:
                out = {"config": await self._config(), "policy": await self._policy()}
            except Exception:  # noqa: BLE001 - a reload bug must not take the gateway down
                log.exception("reload failed; serving on with the configuration in force")
                out = {"error": "reload failed (see the log)"}
            sdnotify.ready("serving (reloaded)")
            return out

    async def _config(self) -> dict[str, Any]:
        gw = self.gw
        try:
            new = await asyncio.to_thread(gw.home.config)
        except ConfigError as e:
            log.error("config reload refused, nothing changed: %s", "; ".join(e.errors)[:2000])
            gw.bus.publish("config.rejected", {"errors": e.errors[:50]}, "warning")
            await gw.pipeline.record_event("config.rejected", errors=e.errors[:50])
            return {"status": "rejected", "errors": e.errors[:50]}
        changed = changed_sections(self.on_file, new)
        applied = [s for s in changed if s in LIVE]
        restart = [s for s in changed if s not in LIVE]
        for section in applied:
            setattr(gw.config, section, getattr(new, section))
        self.on_file = new
        data = {"applied": applied, "needs_restart": restart}
        if restart:
            log.warning("config reloaded: %s changed and apply only after a restart", ", ".join(restart))
        log.info("config reloaded: applied %s", ", ".join(applied) or "nothing (no live change)")
        gw.bus.publish("config.reloaded", data, "warning" if restart else "info")
        await gw.pipeline.record_event("config.reloaded", **data)
        return {"status": "ok", **data}

    async def _policy(self) -> dict[str, Any]:
        engine = self.gw.policy
        if engine is None:
            return {"status": "absent"}
        ok = await policy_setup.reload(self.gw, engine)
        version = engine.policy.version
        if ok:
            log.info("policy reloaded on SIGHUP: version %s", version)
        else:
            log.error("policy reload on SIGHUP refused; version %s stays in force (see policy.rejected)", version)
        return {"status": "ok" if ok else "rejected", "version": version}
