"""Reclaim what a killed gateway left in the kernel for its data home, and nothing of any other.

A `stockade serve` that dies by SIGKILL (or a power cut of the process, an OOM kill) runs no
stop hook: its agents' network namespaces (`/run/netns/stockade-<tag>-<principal>`), the host
ends of their veths (alias `stockade:<tag>:<principal>`), the host nftables table
`inet stockade_egress_<tag>`, and its cgroups (`<parent>/<tag>/<agent>/c<pid>` in every
hierarchy) stay behind. The next start of the same home removes them before it builds anything,
so it starts from a clean slate and its egress part re-creates what the policy wants.

Two homes on one machine never share these names: each carries the home's tag (six hex chars of
its path). The planner matches the tag as a whole name component (`stockade-<tag>-`,
`stockade:<tag>:`, a `<tag>` directory), never as a prefix of a longer one, so another home's
objects are never in the plan.

Functional core, imperative shell: `plan` decides from names alone (unit-tested); `reclaim`
lists the kernel's names, runs the plan, logs each removal and returns a report for health.
It runs only while holding the home's audit lock (the lock a live gateway holds for its whole
life), so it never removes a running gateway's objects.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stockade.audit import writer
from stockade.core.errors import StockadeError
from stockade.core.home import Home
from stockade.core.logs import log
from stockade.egress import manager, netns, nft, ruleset
from stockade.sandbox import cgroups

_TAG_RE = re.compile(r"^[0-9a-f]{6}$")
_PRINCIPAL_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}(\.[a-z][a-z0-9-]{0,47})?$")
_VETH_RE = re.compile(r"^stkv[0-9a-f]{10}$")
_CGROUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Link:
    """A host network interface as `ip -j link` lists it."""

    name: str
    alias: str = ""


@dataclass(frozen=True)
class Found:
    """Names of the kernel objects that exist now (the planner's whole input besides the tag)."""

    netns: tuple[str, ...] = ()                 # entries of /run/netns
    links: tuple[Link, ...] = ()                # host interfaces
    tables: tuple[str, ...] = ()                # host nftables tables of family inet
    cgroups: tuple[str, ...] = ()               # group paths relative to a hierarchy root


@dataclass(frozen=True)
class Plan:
    """What to remove, in the order to remove it."""

    veths: tuple[str, ...] = ()
    netns: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    cgroups: tuple[str, ...] = ()               # deepest first: a group is empty before its parent goes

    def empty(self) -> bool:
        return not (self.veths or self.netns or self.tables or self.cgroups)


def _is_tag(tag: str) -> bool:
    return bool(_TAG_RE.match(tag))


def netns_of_home(names: tuple[str, ...] | list[str], tag: str) -> list[str]:
    """Pure: this home's namespaces: `stockade-<tag>-<principal>` and the upstream discovery
    namespace `stockade-upd-<tag>`."""
    pre = f"{netns.PREFIX}{tag}-"
    return sorted(n for n in names
                  if (n.startswith(pre) and _PRINCIPAL_RE.match(n[len(pre):])) or n == f"{netns.PREFIX}upd-{tag}")


def veths_of_home(links: tuple[Link, ...] | list[Link], tag: str) -> list[str]:
    """Pure: host veth ends this home made (the alias names the home's tag and a principal)."""
    pre = f"stockade:{tag}:"
    return sorted(li.name for li in links
                  if _VETH_RE.match(li.name) and li.alias.startswith(pre) and _PRINCIPAL_RE.match(li.alias[len(pre):]))


def cgroups_of_home(paths: tuple[str, ...] | list[str], parents: tuple[str, ...] | list[str], tag: str) -> list[str]:
    """Pure: `<parent>/<tag>` and every group below it, deepest first (each path component must
    be a plain name: nothing like `..` or an absolute path ever gets into the plan)."""
    out: set[str] = set()
    for parent in parents:
        base = f"{parent.strip('/')}/{tag}"
        if not all(_CGROUP_NAME_RE.match(p) and p not in (".", "..") for p in base.split("/")):
            continue
        for p in paths:
            p = p.strip("/")
            if p != base and not p.startswith(base + "/"):
                continue
            if all(_CGROUP_NAME_RE.match(c) and c not in (".", "..") for c in p.split("/")):
                out.add(p)
    return sorted(out, key=lambda p: (-p.count("/"), p))


def plan(found: Found, tag: str, cgroup_parents: tuple[str, ...] | list[str]) -> Plan:
    """Pure: what of `found` belongs to the home tagged `tag`. An invalid tag plans nothing."""
    if not _is_tag(tag):
        return Plan()
    return Plan(veths=tuple(veths_of_home(found.links, tag)),
                netns=tuple(netns_of_home(found.netns, tag)),
                tables=tuple(t for t in sorted(set(found.tables)) if t == ruleset.host_table(tag)),
                cgroups=tuple(cgroups_of_home(found.cgroups, cgroup_parents, tag)))


# -- the shell --------------------------------------------------------------------------------------
@dataclass
class Report:
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: str | None = None

    def health(self) -> dict[str, Any]:
        return {"status": "degraded" if self.failed else "ok", "removed": self.removed[-50:],
                "removed_count": len(self.removed), "failed": self.failed[-20:],
                **({"skipped": self.skipped} if self.skipped else {})}


def hierarchy_roots(info: cgroups.CgroupInfo) -> list[str]:
    """Every mounted hierarchy a gateway could have used (v1 controllers and the v2 root)."""
    roots = sorted(set(info.v1.values()))
    if info.v2_root:
        roots.append(info.v2_root)
    return roots


def _list_cgroups(roots: list[str], parents: list[str], tag: str) -> list[str]:
    out: set[str] = set()
    for root in roots:
        for parent in parents:
            top = os.path.join(root, parent.strip("/"), tag)
            for d, _subdirs, _files in os.walk(top):
                out.add(os.path.relpath(d, root))
    return sorted(out)


def _list_links() -> list[Link]:
    try:
        links = manager._ipj("link", "show")
    except (OSError, subprocess.SubprocessError, ValueError, StockadeError):
        return []
    return [Link(str(li.get("ifname", "")), str(li.get("ifalias", "") or "")) for li in links]


def _list_tables() -> list[str]:
    try:
        out = nft.run_in_netns(None, [[{"list": {"tables": {"family": "inet"}}}]])
    except (nft.NftError, OSError):
        return []
    names: list[str] = []
    for res in out:
        for item in (res or {}).get("nftables", []) if isinstance(res, dict) else []:
            t = item.get("table") if isinstance(item, dict) else None
            if isinstance(t, dict) and t.get("family") == "inet":
                names.append(str(t.get("name")))
    return names


def survey(tag: str, parents: list[str], roots: list[str]) -> Found:
    """What exists now (names only)."""
    return Found(netns=tuple(p.name for p in netns._list_dir()), links=tuple(_list_links()),
                 tables=tuple(_list_tables()), cgroups=tuple(_list_cgroups(roots, parents, tag)))


def _remove_cgroup(roots: list[str], rel: str) -> bool:
    """Kill what still runs in the group (an orphaned call of the dead gateway), then rmdir it in
    every hierarchy. True when it is gone everywhere."""
    dirs = [os.path.join(r, rel) for r in roots if os.path.isdir(os.path.join(r, rel))]
    for _ in range(50):
        left = []
        for d in dirs:
            kill = os.path.join(d, "cgroup.kill")
            if os.path.exists(kill):
                with contextlib.suppress(OSError):
                    Path(kill).write_text("1")
            else:
                with contextlib.suppress(OSError):
                    for pid in Path(d, "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), 9)
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        if not left:
            return True
        dirs = left
        time.sleep(0.02)
    return False


def execute(p: Plan, tag: str, roots: list[str]) -> Report:
    """Run a plan: each removal logged, each failure kept (reported as degraded health)."""
    rep = Report()

    def done(kind: str, name: str, ok: bool, detail: str = "") -> None:
        item = f"{kind} {name}"
        (rep.removed if ok else rep.failed).append(item)
        if ok:   # a warning: it says the last stop of this home was not clean
            log.warning("reclaimed crash leftover of home %s: %s", tag, item)
        else:
            log.warning("could not reclaim crash leftover of home %s: %s %s", tag, item, detail)

    for v in p.veths:
        r = subprocess.run(["ip", "link", "del", v], capture_output=True, text=True, timeout=30)
        done("veth", v, r.returncode == 0 or not os.path.exists(f"/sys/class/net/{v}"), r.stderr.strip())
    for n in p.netns:
        r = subprocess.run(["ip", "netns", "delete", n], capture_output=True, text=True, timeout=30)
        gone = not (netns.NETNS_DIR / n).exists()
        if not gone and not netns.is_netns(netns.NETNS_DIR / n):   # a stale plain file (reboot of /run)
            with contextlib.suppress(OSError):
                (netns.NETNS_DIR / n).unlink()
            gone = not (netns.NETNS_DIR / n).exists()
        done("netns", n, gone, r.stderr.strip())
    for t in p.tables:
        try:
            nft.run_in_netns(None, [[{"delete": {"table": {"family": "inet", "name": t}}}]])
            done("nft table", f"inet {t}", True)
        except (nft.NftError, OSError) as e:
            done("nft table", f"inet {t}", False, str(e)[:200])
    for g in p.cgroups:
        done("cgroup", g, _remove_cgroup(roots, g))
    if p.veths:
        with contextlib.suppress(OSError):
            manager.forwarding_needed(False)   # restores ip_forward when no stockade veth is left
    return rep


def reclaim(home: Home, cgroup_parents: list[str]) -> Report:
    """At start-up, before anything is built: remove this home's leftovers. Does nothing (and
    says why) when the home is held by another process: its objects are live, not leftovers."""
    if os.geteuid() != 0:
        return Report(skipped="not root: a gateway without root made no namespaces or cgroups")
    try:
        fd = writer.try_lock(home.audit_dir)
    except OSError as e:
        return Report(skipped=f"cannot open the home's audit lock: {e.strerror or e}")
    if fd is None:
        return Report(skipped="another process holds this home")
    try:
        tag = netns.home_tag(home)
        roots = hierarchy_roots(cgroups.detect())
        p = plan(survey(tag, cgroup_parents, roots), tag, cgroup_parents)
        return execute(p, tag, roots)
    finally:
        writer.unlock(fd)
