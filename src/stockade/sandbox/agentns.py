"""Fallback per-agent network namespace (used only while `sandbox/netns.py`, owned by the
egress part, does not provide `ensure_agent_netns`).

Creates `/run/netns/stockade-<agent>` (the `ip netns` convention) holding only `lo`, up.
"""

from __future__ import annotations

import os
import subprocess

NETNS_DIR = "/run/netns"


def name_for(agent: str) -> str:
    return f"stockade-{agent}"


def path_for(agent: str) -> str:
    return os.path.join(NETNS_DIR, name_for(agent))


def ensure(agent: str) -> str:
    path = path_for(agent)
    if not os.path.exists(path):
        subprocess.run(["ip", "netns", "add", name_for(agent)], check=True, capture_output=True, timeout=10)
    subprocess.run(["ip", "-n", name_for(agent), "link", "set", "lo", "up"], check=True,
                   capture_output=True, timeout=10)
    return path


def remove(agent: str, home: object | None = None) -> None:
    """Tear the agent's namespace down (the egress part's, or our fallback's)."""
    try:
        from stockade.sandbox import netns

        fn = getattr(netns, "remove_agent_netns", None)
    except ImportError:
        fn = None
    if fn is not None and home is not None:
        fn(agent, home)
    if os.path.exists(path_for(agent)):
        subprocess.run(["ip", "netns", "del", name_for(agent)], capture_output=True, timeout=10)


def ensure_agent_netns(home: object, agent: str) -> str:
    """The egress part's contract, when that part is absent."""
    try:
        from stockade.sandbox import netns

        fn = getattr(netns, "ensure_agent_netns", None)
    except ImportError:
        fn = None
    if fn is not None:
        return fn(home, agent)
    return ensure(agent)
