"""system.* and agent.*: in-process, read-only views of gateway state."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

from stockade import __version__
from stockade.capabilities.registry import implements

MCP_PROTOCOLS = ["2025-11-25", "2026-07-28"]


@implements("system.time")
def system_time(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    now_ns = time.time_ns()
    return {
        "utc": datetime.fromtimestamp(now_ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "unix": now_ns // 1_000_000_000,
        "unix_ms": now_ns // 1_000_000,
    }


@implements("system.info")
def system_info(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    u = os.uname()
    return {
        "product": "stockade",
        "version": __version__,
        "kernel": u.release,
        "arch": platform.machine(),
        "mcp_protocols": MCP_PROTOCOLS,
        "uptime_s": round(time.time() - ctx.pipeline.started, 3),
    }


@implements("system.health")
def system_health(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    layers = {k: v for k, v in ctx.pipeline.health.items()}
    statuses = {v.get("status", "ok") for v in layers.values() if isinstance(v, dict)}
    status = "critical" if "critical" in statuses else "degraded" if "degraded" in statuses else "ok"
    return {"status": status, "layers": layers}


@implements("agent.whoami")
def agent_whoami(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    c = ctx.caller
    return {"agent": c.agent, "session": c.session, "transport": c.transport}


@implements("agent.capabilities")
def agent_capabilities(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Each visible capability with the tier it runs at, or, where the arguments decide (a write
    inside /workspace runs, outside it is blocked), the range of tiers and the rules that decide."""
    p = ctx.pipeline
    out = []
    for d in p.visible(ctx.caller):
        entry = {"name": d.name, **capability_outlook(p.policy, ctx.caller.agent, d), "purpose": d.purpose}
        if entry["min_tier"] == "blocked":
            continue  # argument-independent blocks are hidden already; this is belt and braces
        out.append(entry)
    return {"capabilities": out}


_ORDER = ("autonomous", "notify", "approval_required", "blocked")


def pack_floor(look: dict[str, Any], d: Any) -> dict[str, Any]:
    """A pack's declared tier is a floor the pipeline applies after policy: show it here too."""
    floor = getattr(d, "default_tier", None) if getattr(d, "pack", None) else None
    if floor not in _ORDER:
        return look
    up = {k: max(look[k], floor, key=_ORDER.index) for k in ("min_tier", "max_tier") if look.get(k) in _ORDER}
    look.update(up)
    if look.get("depends_on_arguments") and look["min_tier"] == look["max_tier"]:
        look.update(depends_on_arguments=False, tier=look["min_tier"])
        look.pop("rules", None)
    elif look.get("tier") in _ORDER:
        look["tier"] = max(look["tier"], floor, key=_ORDER.index)
    return look


def argument_names(d: Any) -> frozenset[str] | None:
    """The arguments a definition's schema names (None: it does not say)."""
    props = (d.input_schema or {}).get("properties")
    return frozenset(props) if isinstance(props, dict) else None


def capability_outlook(policy: Any, agent: str, d: Any, owner: bool = False) -> dict[str, Any]:
    """The policy's outlook for one capability (`owner`: with the rules' file:line); a policy hook
    without one (no policy part) is asked about a call without arguments."""
    look = getattr(policy, "outlook", None)
    if callable(look):
        with contextlib.suppress(Exception):   # a broken rule must not hide the rest of the list
            return pack_floor(dict(look(agent, d.name, argument_names(d), owner=owner)), d)
    try:
        tier = policy.peek(agent, d.name, {}).tier
    except Exception:  # noqa: BLE001
        tier = "approval_required"
    return {"tier": tier, "min_tier": tier, "max_tier": tier, "depends_on_arguments": False}
