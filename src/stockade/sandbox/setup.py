"""Sandbox part hooks: the zygote at prefork, the executor hook at start, doctor checks."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from stockade.capabilities.registry import Definition
from stockade.core import volume
from stockade.core.home import Home
from stockade.core.wiring import Gateway
from stockade.egress import netns
from stockade.packs.setup import pack_info
from stockade.sandbox import agentns, cgroups, landlock, leftovers, seccomp
from stockade.sandbox.executor import SandboxExecutor
from stockade.sandbox.zygote import probe_userns


class _LivePolicy:
    """The policy part starts after us: ask whichever engine is in force at call time."""

    def __init__(self, gw: Gateway):
        self.gw = gw

    def sandbox_profile(self, agent: str) -> dict[str, Any] | None:
        return self.gw.policy.sandbox_profile(agent) if self.gw.policy is not None else None


def nftables_status() -> dict[str, Any]:
    lib = ctypes.util.find_library("nftables")
    nft = shutil.which("nft") or (os.path.exists("/usr/sbin/nft") and "/usr/sbin/nft") or None
    out: dict[str, Any] = {"libnftables": bool(lib), "nft": nft}
    if nft and os.geteuid() == 0:
        try:
            r = subprocess.run([nft, "list", "tables"], capture_output=True, timeout=5)
            out["usable"] = r.returncode == 0
            if r.returncode:
                out["error"] = r.stderr.decode(errors="replace")[:200]
        except (OSError, subprocess.TimeoutExpired) as e:
            out["usable"] = False
            out["error"] = str(e)[:200]
    else:
        out["usable"] = False
    return out


def prefork(gw: Gateway) -> None:
    """Spawn the zygote while the gateway is still single-threaded and holds no secrets.

    First, what a killed gateway of this home left in the kernel (namespaces, veths, its host
    nftables table, cgroups) is reclaimed, so this start builds on a clean slate."""
    cfg = gw.config.sandbox
    gw.pipeline.health["leftovers"] = leftovers.reclaim(gw.home, [cfg.cgroup_parent]).health()

    def packs(definition: Definition) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return pack_info(gw, definition)

    def pack_netns(agent: str, pack: str, granted: tuple[str, ...]) -> str:
        """The egress part in force at call time loads the pack's own rules; with none running
        the pack gets a namespace with only `lo`."""
        if gw.egress is not None:
            return gw.egress.pack_netns(agent, pack, granted)
        return agentns.ensure_agent_netns(gw.home, netns.pack_principal(agent, pack))

    ex = SandboxExecutor(gw.home, host_uid=cfg.host_uid, call_timeout=cfg.call_timeout,
                         max_output_bytes=cfg.max_output_bytes, cgroup_parent=cfg.cgroup_parent,
                         db=gw.pipeline.db, policy=_LivePolicy(gw), pack_info=packs,
                         gateway_health=gw.pipeline.health, pack_netns=pack_netns, pool=cfg.pool)
    try:
        ex.start_zygote()
    except Exception as e:  # no zygote: every sandboxed call fails with SandboxUnavailable
        ex.status = {"problems": [f"zygote: {type(e).__name__}: {e}"[:300]]}
    gw.sandbox = ex


async def start(gw: Gateway) -> None:
    if gw.sandbox is None:  # prefork was skipped (tests building a Gateway by hand)
        prefork(gw)
    ex = gw.sandbox
    assert ex is not None  # noqa: S101  (prefork always sets it)
    gw.pipeline.sandbox = ex
    if ex.pool:
        gw.tasks.append(asyncio.create_task(_invalidate_on_events(gw, ex), name="sandbox-pool-invalidation"))
    h = ex.health()
    h["nftables"] = nftables_status()
    gw.pipeline.health["sandbox"] = h


def invalidated_by(kind: str, data: dict[str, Any]) -> list[str | None]:
    """Pure: whose pre-armed children an event invalidates (None: every agent's).

    A revoked agent; every agent when the policy is reloaded (a profile, rule or egress list
    may have changed) or egress rules had to be repaired; the agents an egress change names
    (a pack's principal `agent.pack` counts for its agent)."""
    if kind == "agent.revoked":
        return [data["agent"]] if isinstance(data.get("agent"), str) else [None]
    if kind in ("policy.reloaded", "egress.repaired"):
        return [None]
    if kind == "egress.changed":
        names = {str(n).split(".", 1)[0] for key in ("added", "updated", "removed", "repaired")
                 for n in (data.get(key) or []) if isinstance(n, str)}
        return [None] if "host" in names or not names else list(sorted(names))
    return []


async def _invalidate_on_events(gw: Gateway, ex: SandboxExecutor) -> None:
    """Keep the pool honest: a child armed before a change is killed, never used after it."""
    sub = gw.bus.subscribe()
    try:
        while True:
            ev = await sub.get(timeout=5.0)
            if ev is None:
                continue
            for agent in invalidated_by(ev.kind, ev.data):
                await ex.invalidate(agent)
    finally:
        sub.close()


async def stop(gw: Gateway) -> None:
    if gw.sandbox is not None:
        gw.sandbox.stop()


def doctor(home: Home) -> dict[str, dict[str, Any]]:
    """Probe each layer in this process (no server needed)."""
    out: dict[str, dict[str, Any]] = {}
    abi = landlock.abi_version()
    out["sandbox.landlock"] = {"status": "critical" if abi < 1 else "degraded" if abi < 6 else "ok", "abi": abi,
                               "tcp_rules": abi >= 4, "scoping": abi >= 6}
    try:
        progs = seccomp.build("default")
        out["sandbox.seccomp"] = {"status": "ok", "instructions": len(progs[0]) // 8,
                                  "allowlist": len(seccomp.ALLOW)}
    except Exception as e:
        out["sandbox.seccomp"] = {"status": "critical", "error": str(e)[:200]}
    userns = os.geteuid() == 0 and probe_userns()
    out["sandbox.userns"] = {"status": "ok" if userns else "critical", "available": userns}
    if os.geteuid() != 0:
        out["sandbox.userns"]["error"] = "the gateway must run as root to build sandboxes"
    info = cgroups.detect()
    missing = cgroups.missing_controllers(info)
    out["sandbox.cgroup"] = {"status": "critical" if missing else "ok", **info.summary(),
                             **({"missing": missing} if missing else {})}
    nft = nftables_status()
    out["sandbox.nftables"] = {"status": "ok" if nft.get("usable") else "degraded", **nft}
    with contextlib.suppress(Exception):
        cfg = home.config().sandbox
        out["sandbox.userns"]["host_uid_base"] = cfg.host_uid
    out["sandbox.host_paths"] = host_paths_check(home.root)
    return out


def host_paths_check(root: Path) -> dict[str, Any]:
    """Whether the sandbox can learn the data home's host path from /proc/self/mountinfo.

    The kernel prints a bind mount's root as its path within its filesystem, so the lines of
    /workspace, /trash, /shared and /pack name the data home unless the directories they bind
    live on a filesystem mounted inside the home: the home's volume (`stockade volume create`,
    made by `stockade init` as root) or a home that is a filesystem of its own."""
    shown = volume.status(Home(root))["exposed"]
    if not shown:
        return {"status": "ok", "exposed": {}}
    return {"status": "degraded", "exposed": shown,
            "hint": f"/proc/self/mountinfo inside the sandbox names {root}; give the home a volume "
                    "(`stockade volume create SIZE`, docs/sandbox.md \"The volume\")"}
