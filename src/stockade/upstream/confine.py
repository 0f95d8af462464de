"""Where an upstream server instance runs: its uid, network namespace, cgroup and view.

An instance for agent A runs as A's sandbox uid (the same unprivileged host uid A's per-call
sandboxes use), in its own network namespace (the egress part's namespace for the principal
`A.up-<server>`, loaded with exactly the server's allowlist that A's policy also allows; only
`lo` without egress), in its own cgroup leaf with the server's limits, seeing only the
directories its config names plus a private state directory `/data` for (server, agent).
Tool discovery at start runs one instance as the base uid (no agent's), in a namespace with
only `lo` and nothing writable but /tmp.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

from stockade.core.home import Home
from stockade.egress import netns
from stockade.sandbox import Profile, cgroups
from stockade.sandbox.longlived import Bind, Spec
from stockade.upstream.config import ServerConfig

DATA = "/data"            # where an instance sees its private state directory
DISCOVERY = ""            # the agent name of a discovery instance
CGROUP_PARENT = "stockade-upstream"
_NETNS_LOCK = threading.Lock()
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


@dataclass
class Placement:
    """What the gateway set up for one instance (removed when it stops)."""

    spec: Spec
    cgroup: cgroups.CallCgroup | None
    data_dir: str | None


def principal_pack(server: str) -> str:
    """The pack-like second half of the instance's egress principal (`<agent>.up-<server>`)."""
    return "up-" + server.replace("_", "-")


def profile(cfg: ServerConfig) -> Profile:
    return Profile(cpu=cfg.cpu, memory=cfg.memory, pids=cfg.pids, egress=tuple(cfg.egress),
                   timeout=cfg.timeout, max_output_bytes=cfg.max_output_bytes)


def discovery_netns(home: Home) -> str:
    """A namespace with only `lo`, outside the egress part's names (its reconcile never owns it)."""
    name = f"stockade-upd-{netns.home_tag(home)}"
    path = f"/run/netns/{name}"
    with _NETNS_LOCK:   # discoveries run concurrently: one creates it
        if not netns.is_netns(path):
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
    return path


def granted(egress: Any, agent: str, cfg: ServerConfig) -> tuple[str, ...]:
    """The server's entries that the agent's policy also allows (none without the egress part)."""
    if egress is None or not cfg.egress:
        return ()
    allowed = {str(e) for e in egress.profile(agent)}
    return tuple(e for e in cfg.egress if e in allowed)


def agent_netns(home: Home, egress: Any, agent: str, server: str, entries: tuple[str, ...]) -> str:
    pack = principal_pack(server)
    if egress is not None:
        return str(egress.pack_netns(agent, pack, entries))
    return netns.ensure_agent_netns(home, netns.pack_principal(agent, pack))


def cgroup_leaf(home: Home, agent: str, server: str, cfg: ServerConfig) -> cgroups.CallCgroup:
    info = cgroups.detect()
    group = cgroups.AgentCgroup(info, CGROUP_PARENT, f"{agent or 'discovery'}.{server}", netns.home_tag(home))
    p = profile(cfg)
    group.ensure(p, [])
    leaf = group.call("server")
    leaf.create(p, [])
    return leaf


def data_dir(home: Home, agent: str, server: str, uid: int) -> str:
    """The instance's private state directory (its `/data`), owned by the agent's sandbox uid."""
    d = home.root
    for part in ("upstream", "data", server, agent):   # every level 0700, like the rest of the home
        d = d / part
        d.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if st.st_uid != uid:
        os.chown(d, uid, uid)
    os.chmod(d, 0o700)
    return str(d)


def hosts_text(resolved: dict[str, list[str]]) -> str:
    """Pure: an instance's /etc/hosts: loopback, then each allowlisted host name with the addresses
    the egress part resolved for it, which are exactly the ones its rules let through (a resolver
    of the server's own could answer others, which the rules would refuse)."""
    lines = ["127.0.0.1 localhost upstream", "::1 localhost ip6-localhost"]
    lines += [f"{a} {host}" for host in sorted(resolved) for a in resolved[host]]
    return "\n".join(lines) + "\n"


def resolved_names(egress: Any, agent: str, server: str) -> dict[str, list[str]]:
    """The egress part's resolution of the instance's host-name entries (none without the part)."""
    if egress is None:
        return {}
    principal = netns.pack_principal(agent, principal_pack(server))
    st = egress.status().get(principal) or {}
    return {h: [str(a) for a in v.get("allowed") or []] for h, v in (st.get("resolved") or {}).items()}


def hosts_path(home: Home, agent: str, server: str) -> str:
    return os.path.join(str(home.run), "upstream-hosts", f"{agent}.{server}")


def write_hosts(home: Home, egress: Any, agent: str, server: str) -> str:
    """Write the instance's hosts file in place (the running server sees it through a bind mount
    of this inode, so it is rewritten, never replaced). Returns its path."""
    path = hosts_path(home, agent, server)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    data = hosts_text(resolved_names(egress, agent, server)).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)        # the agent's sandbox uid reads it
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return path


def spec(cfg: ServerConfig, env: dict[str, str], uid: int, netns_path: str, cgroup_procs: tuple[str, ...],
         data: str | None, entries: tuple[str, ...] = (), hosts: str = "", extra: tuple[Bind, ...] = ()) -> Spec:
    """Pure: the launch spec of one instance (`entries`: its granted egress; `hosts`: its hosts
    file; `extra`: binds of a pack's server, the pack and stockade's own code, read-only)."""
    assert cfg.command is not None  # noqa: S101 - a url server is connected to, never placed
    binds = [Bind(f.path, f.mode == "ro") for f in cfg.filesystem] + list(extra)
    if data is not None:
        binds.append(Bind(data, False, DATA))
    return Spec(argv=(cfg.command, *cfg.args), env={**BASE_ENV, **({"STOCKADE_DATA": DATA} if data else {}), **env},
                uid=uid, gid=uid, netns=netns_path, cgroup_procs=cgroup_procs, binds=tuple(binds),
                connect_ports=tuple(Profile(egress=entries).egress_ports()), hosts_file=hosts)


def place(home: Home, egress: Any, agent: str, server: str, cfg: ServerConfig, uid: int,
          env: dict[str, str], extra: tuple[Bind, ...] = ()) -> Placement:
    """Set up namespace, cgroup and state directory for an instance (blocking: run in a thread)."""
    entries: tuple[str, ...] = ()
    hosts = ""
    if agent == DISCOVERY:
        path = discovery_netns(home)
        data = None
    else:
        entries = granted(egress, agent, cfg)
        path = agent_netns(home, egress, agent, server, entries)
        data = data_dir(home, agent, server, uid)
        hosts = write_hosts(home, egress, agent, server)
    leaf = cgroup_leaf(home, agent, server, cfg)
    procs = tuple(os.path.join(d, "cgroup.procs") for d in leaf.dirs().values())
    return Placement(spec(cfg, env, uid, path, procs, data, entries, hosts, extra), leaf, data)


def release(p: Placement) -> None:
    """After the instance's processes are gone: kill stragglers, remove its cgroup leaf and group."""
    if p.cgroup is not None:
        with contextlib.suppress(OSError):
            p.cgroup.kill_all()
        p.cgroup.remove()
        p.cgroup.agent.remove()


def forget(home: Home, agent: str, server: str) -> None:
    """At shutdown: the instance's network namespace (a discovery instance: the shared one)."""
    with contextlib.suppress(Exception):
        if agent == DISCOVERY:
            name = f"stockade-upd-{netns.home_tag(home)}"
            if os.path.exists(f"/run/netns/{name}"):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
            cgroups.remove_tree(cgroups.detect(), os.path.join(CGROUP_PARENT, netns.home_tag(home)))
        else:
            netns.remove_agent_netns(netns.pack_principal(agent, principal_pack(server)), home)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(hosts_path(home, agent, server))
