"""Per-agent long-lived network namespaces (owned by the egress part; the sandbox joins them).

Contract used by the sandbox: `ensure_agent_netns(home, agent) -> str` returns a path that a
child can open and `setns(fd, CLONE_NEWNET)` into (a bind-mounted namespace file under
/run/netns). The namespace exists with only `lo` up until egress adds a veth and nftables rules
for agents whose profile has egress. `remove_agent_netns(agent, home)` tears it down.

Why long-lived: creating a namespace per call costs 1-10 ms under churn (rtnl held by async
teardown); joining an existing one costs ~0.2 ms (docs/design.md "Sandbox").

The name carries a short hash of the data home so two homes on one machine (tests under xdist,
or two gateways) never share an agent's namespace. The path lives in the host mount namespace:
open it before unsharing the mount namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import threading
from pathlib import Path

from stockade.core.errors import err

NETNS_DIR = Path("/run/netns")
LOCK_DIR = Path("/run/stockade")
PREFIX = "stockade-"
_AGENT_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
# A principal owns one namespace: an agent (`alice`), or one pack's calls for one agent
# (`alice.exchange`): a pack never runs in its agent's namespace, whose rules allow the agent's
# whole list, but in its own, whose rules allow only what the pack was granted.
_PRINCIPAL_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}(\.[a-z][a-z0-9-]{0,47})?$")
_lock = threading.Lock()


def home_tag(home: object) -> str:
    """Six hex chars naming a data home (its absolute root path), stable across restarts."""
    root = getattr(home, "root", home)
    return hashlib.sha256(str(Path(str(root)).absolute()).encode()).hexdigest()[:6]


def pack_principal(agent: str, pack: str) -> str:
    """The principal of `pack`'s calls for `agent` (`<agent>.<pack>`): its own namespace."""
    principal = f"{agent}.{pack}"
    if not _AGENT_RE.match(agent or "") or not _PRINCIPAL_RE.match(principal):
        raise err("InvalidInput", f"invalid agent or pack name {principal!r}")
    return principal


def agent_of(principal: str) -> str:
    """The agent a principal belongs to (itself for an agent)."""
    return principal.split(".", 1)[0]


def netns_name(home: object, agent: str) -> str:
    """`stockade-<hometag>-<principal>`: unique per (home, agent) and per (home, agent, pack)."""
    if not _PRINCIPAL_RE.match(agent or ""):
        raise err("InvalidInput", f"invalid agent name {agent!r}")
    return f"{PREFIX}{home_tag(home)}-{agent}"


def netns_path(home: object, agent: str) -> str:
    return str(NETNS_DIR / netns_name(home, agent))


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def is_netns(path: str | os.PathLike[str]) -> bool:
    """True if `path` is a live namespace bind mount (nsfs), not a stale plain file."""
    try:
        return os.stat(path).st_dev == _nsfs_dev()
    except OSError:
        return False


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class _FileLock:
    """Cross-process lock so two gateways/tests don't race `ip netns add` for the same name
    (one lock file for all names: creation is rare, and per-name files would pile up)."""

    def __init__(self, name: str) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = str(LOCK_DIR / "netns.lock")

    def __enter__(self) -> _FileLock:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def ensure_agent_netns(home: object, agent: str) -> str:
    """Create (once) the agent's namespace with `lo` up; return the path to setns into.

    Idempotent and cheap when it already exists (one stat). Raises SandboxUnavailable when the
    namespace cannot be created (not root, no `ip`): callers must fail the call, never run
    without it.
    """
    name = netns_name(home, agent)
    path = NETNS_DIR / name
    if is_netns(path):
        return str(path)
    with _lock:
        try:
            with _FileLock(name):
                if is_netns(path):
                    return str(path)
                if path.exists():  # stale file left by a crash or a reboot of /run
                    _ip("netns", "delete", name, check=False)
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                _ip("netns", "add", name)
                _ip("-n", name, "link", "set", "lo", "up")
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise err(
                "SandboxUnavailable",
                f"cannot create network namespace for agent {agent!r}: {detail.strip()}",
                layer="netns",
            ) from None
    if not is_netns(path):
        raise err("SandboxUnavailable", f"network namespace {name} did not appear", layer="netns")
    return str(path)


def remove_agent_netns(agent: str, home: object | None = None) -> bool:
    """Remove the agent's namespace (and with it any veth end inside it). True if one existed.

    With `home` given, removes exactly that home's namespace (an agent's: with its packs'
    namespaces); without it, every stockade
    namespace of that agent name (all homes). Egress rules inside the namespace die with it;
    host-side rules are removed by `stockade.egress` (which calls this).
    """
    if home is not None:
        names = [netns_name(home, agent)]
        if "." not in agent:   # an agent's packs' namespaces go with it
            pre = netns_name(home, agent) + "."
            names += [p.name for p in _list_dir() if p.name.startswith(pre)]
    else:
        if not _AGENT_RE.match(agent or ""):
            raise err("InvalidInput", f"invalid agent name {agent!r}")
        names = [p.name for p in _list_dir() if p.name.startswith(PREFIX) and p.name.endswith("-" + agent)
                 and len(p.name) == len(PREFIX) + 6 + 1 + len(agent)]
    found = False
    with _lock:
        for name in names:
            path = NETNS_DIR / name
            if not path.exists():
                continue
            found = True
            with _FileLock(name):
                r = _ip("netns", "delete", name, check=False)
                if path.exists():
                    raise err("Internal", f"could not remove network namespace {name}: {r.stderr.strip()}")
    return found


def _list_dir() -> list[Path]:
    try:
        return list(NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def list_agent_netns(home: object) -> dict[str, str]:
    """{principal: path} for this home's namespaces, agents' and packs' (doctor, restart cleanup)."""
    pre = f"{PREFIX}{home_tag(home)}-"
    return {p.name[len(pre):]: str(p) for p in _list_dir() if p.name.startswith(pre) and is_netns(p)}
