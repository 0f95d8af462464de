"""The sandbox's entry to per-agent network namespaces, which the egress part owns
(`stockade.egress.netns`); `ensure`/`remove` keep the old unhashed `/run/netns/stockade-<agent>`
name (the `ip netns` convention, only `lo` up) so a namespace left by an older gateway goes away.
"""

from __future__ import annotations

import os
import subprocess

from stockade.core.home import Home
from stockade.egress import netns

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


def remove(agent: str, home: Home | None = None) -> None:
    """Tear the agent's namespace down (the egress part's, and an old unhashed one)."""
    if home is not None:
        netns.remove_agent_netns(agent, home)
    if os.path.exists(path_for(agent)):
        subprocess.run(["ip", "netns", "del", name_for(agent)], capture_output=True, timeout=10)


def ensure_agent_netns(home: Home, agent: str) -> str:
    """The agent's namespace (created with only `lo` up when missing), by the egress part."""
    return netns.ensure_agent_netns(home, agent)
