"""The imperative shell of egress: namespaces, veth pairs, nftables tables, DNS refresh.

`Egress.reconcile()` drives the kernel towards the desired state computed from the policy
(every active agent's `sandbox.egress` list) and is idempotent from any starting point: after a
crash, a restart, a hand-deleted veth or table, it converges. The gateway runs it at start,
on every policy change (polled), when DNS answers expire, and on `egress.reload`.

Kernel objects, per data home (tag = 6 hex chars of the home path):
* namespace `/run/netns/stockade-<tag>-<agent>` (stockade.egress.netns; lo up),
* veth `stkv<10 hex>` (host) <-> `egress0` (agent), a /30 from `egress.subnet`; the host end
  carries the alias `stockade:<tag>:<agent>` so restarts find what they made,
* table `inet stockade_egress` inside the namespace and `inet stockade_egress_<tag>` on the host
  (stockade.egress.ruleset),
* `net.ipv4.ip_forward` switched on only while some agent has egress; if it was off before,
  the original value is kept in /run/stockade/ip_forward.orig, a guard rule keeps the host from
  forwarding anything else, and it is switched off again when the last stockade veth is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stockade.core import yamlfile
from stockade.core.errors import ConfigError, err
from stockade.core.home import Home, write_private
from stockade.egress import dns, netns, nft, ruleset
from stockade.egress.rules import Allowlist, Entry, Forbidden, parse_entries, split_answers

NS_IF = "egress0"
STATE_DIR = Path("/run/stockade")
FORWARD_ORIG = STATE_DIR / "ip_forward.orig"
_alloc_lock = threading.Lock()


# -- settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    resolver: str | None = None          # IPv4 of the one DNS server agents (and we) may use
    subnet: str = "10.213.0.0/16"        # pool for per-agent /30 veth links
    refresh: float = 300.0               # max seconds between DNS refreshes of allowlisted names
    poll: float = 2.0                    # seconds between policy/agent change checks


def system_resolver() -> str | None:
    """First non-loopback IPv4 nameserver of /etc/resolv.conf (loopback stubs are unreachable
    from an agent's namespace)."""
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ip = ipaddress.IPv4Address(parts[1])
            except ValueError:
                continue
            if not ip.is_loopback:
                return str(ip)
    return None


def load_settings(home: Home) -> Settings:
    raw = dict(home.config().egress or {})
    errors: list[str] = []
    unknown = set(raw) - {"resolver", "subnet", "refresh", "poll"}
    if unknown:
        errors.append(f"{home.config_path}: egress: unknown keys {sorted(unknown)}")
    resolver = raw.get("resolver", "system")
    if resolver in ("system", None, ""):
        resolver = system_resolver() if resolver == "system" else None
    else:
        try:
            resolver = str(ipaddress.IPv4Address(str(resolver)))
        except ValueError:
            errors.append(f"{home.config_path}: egress.resolver: expected an IPv4 address, 'system' or null")
    subnet = str(raw.get("subnet", Settings.subnet))
    try:
        net = ipaddress.IPv4Network(subnet)
        if net.prefixlen > 29:
            errors.append(f"{home.config_path}: egress.subnet: needs at least a /29")
    except ValueError:
        errors.append(f"{home.config_path}: egress.subnet: expected an IPv4 CIDR")
    from stockade.core.config import parse_duration

    vals: dict[str, float] = {}
    for k in ("refresh", "poll"):
        try:
            vals[k] = parse_duration(raw.get(k, getattr(Settings, k)))
        except ValueError as e:
            errors.append(f"{home.config_path}: egress.{k}: {e}")
    if errors:
        raise ConfigError(errors)
    return Settings(resolver, subnet, max(1.0, vals["refresh"]), max(0.1, vals["poll"]))


# -- profiles -------------------------------------------------------------------------------------
def read_egress_from_files(home: Home, agent: str) -> list[str]:
    """`sandbox.egress` of the agent file, else of the org file (the policy engine's overlay).

    Used when the policy part is not plugged in (CLI doctor, tests); the gateway asks the live
    policy hook so hot reload and validation stay the policy part's job.
    """
    out: list[str] = []
    for path in (home.policies / "org.yaml", home.policies / "agents" / f"{agent}.yaml"):
        if not path.exists():
            continue
        data, _ = yamlfile.load(path)
        sb = data.get("sandbox") if isinstance(data, dict) else None
        if isinstance(sb, dict) and "egress" in sb:
            eg = sb.get("egress") or []
            if not isinstance(eg, list):
                raise ConfigError([f"{path}: sandbox.egress must be a list"])
            out = [str(x) for x in eg]
    return out


def profile_source(home: Home) -> Callable[[str], list[str]]:
    """agent -> its egress list, read from the policy files (CLI, tests: no gateway running; the
    gateway asks the live policy engine instead, egress.setup)."""

    def source(agent: str) -> list[str]:
        return read_egress_from_files(home, agent)

    return source


def active_agents(home: Home) -> list[str]:
    from stockade.core import agents

    conn = home.db()
    try:
        return [a.name for a in agents.list_all(conn) if a.active]
    finally:
        conn.close()


# -- host facts -----------------------------------------------------------------------------------
def _ipj(*args: str) -> Any:
    r = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise err("Internal", f"ip {' '.join(args)}: {r.stderr.strip()}")
    return json.loads(r.stdout or "[]")


def host_facts() -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(host IPv4 addresses, on-link LAN subnets of non-veth interfaces, raw link list)."""
    links = _ipj("-d", "addr", "show")
    local: list[str] = []
    lan: list[str] = []
    for li in links:
        kind = (li.get("linkinfo") or {}).get("info_kind")
        for a in li.get("addr_info", []):
            if a.get("family") != "inet":
                continue
            local.append(a["local"])
            if kind != "veth" and li.get("ifname") != "lo":
                lan.append(str(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)))
    return local, lan, links


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctl(name: str) -> str:
    return _sysctl_path(name).read_text().strip()


def _write_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value)


class _Flock:
    def __init__(self, name: str) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = STATE_DIR / name

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def forwarding_needed(on: bool) -> bool:
    """Switch ip_forward for stockade's veths; returns whether the guard rule is needed
    (forwarding was off before stockade turned it on)."""
    if not on and not FORWARD_ORIG.exists():
        return False   # stockade never switched it on: nothing to undo (and no root needed)
    with _Flock("forward.lock"):
        cur = _read_sysctl("net.ipv4.ip_forward")
        if on:
            if not FORWARD_ORIG.exists():
                FORWARD_ORIG.write_text(cur)
            if cur != "1":
                _write_sysctl("net.ipv4.ip_forward", "1")
            return FORWARD_ORIG.read_text().strip() == "0"
        # off: only when no stockade veth is left on the host (other homes may still need it)
        if any(n.startswith("stkv") for n in os.listdir("/sys/class/net")):
            return FORWARD_ORIG.exists() and FORWARD_ORIG.read_text().strip() == "0"
        if FORWARD_ORIG.exists():
            orig = FORWARD_ORIG.read_text().strip()
            if orig == "0":
                _write_sysctl("net.ipv4.ip_forward", "0")
            FORWARD_ORIG.unlink()
        return False


# -- per-agent state --------------------------------------------------------------------------------
def veth_name(tag: str, agent: str) -> str:
    return "stkv" + hashlib.sha256(f"{tag}:{agent}".encode()).hexdigest()[:10]


def alias(tag: str, agent: str) -> str:
    return f"stockade:{tag}:{agent}"


@dataclass
class NameCache:
    allowed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    expires: float = 0.0
    error: str | None = None
    resolved_at: float = 0.0


@dataclass
class AgentState:
    agent: str
    items: tuple[str, ...]
    entries: tuple[Entry, ...]
    errors: tuple[str, ...]
    netns: str | None = None
    veth: str | None = None
    host_ip: str | None = None
    agent_ip: str | None = None
    elements: tuple[tuple[str, int], ...] = ()
    allowlist: Allowlist | None = None
    loaded_at: float = 0.0


@dataclass
class Egress:
    """One data home's egress state. Thread-safe: all mutation happens under `lock`."""

    home: Home
    settings: Settings
    profile: Callable[[str], list[str]]
    agents: dict[str, AgentState] = field(default_factory=dict)
    names: dict[str, NameCache] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    guard: bool = False
    last_error: str | None = None
    resolve: Callable[[str], tuple[list[str], int]] | None = None
    # principal (`<agent>.<pack>`) -> the entries the pack was granted at its last call
    packs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    repairs: list[dict[str, Any]] = field(default_factory=list)   # kernel state restored (for health)

    @property
    def tag(self) -> str:
        return netns.home_tag(self.home)

    @property
    def view_dir(self) -> Path:
        return self.home.run / "egress"

    # -- DNS ------------------------------------------------------------------------------------
    def _lookup(self, name: str) -> tuple[list[str], int]:
        if self.resolve is not None:
            return self.resolve(name)
        if self.settings.resolver:
            ans = dns.query(self.settings.resolver, name)
            if ans.rcode not in (0, 3):
                raise dns.DnsError(f"resolver answered rcode {ans.rcode}")
            return list(ans.addresses), ans.ttl
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        return sorted({str(i[4][0]) for i in infos}), int(self.settings.refresh)

    def _resolve_names(self, entries: list[Entry], forbidden: Forbidden, force: bool, now: float) -> bool:
        changed = False
        for host in sorted({e.host for e in entries if e.host}):
            c = self.names.get(host)
            if c is not None and not force and now < c.expires:
                continue
            try:
                addrs, ttl = self._lookup(host)
                ok, bad = split_answers(forbidden, entries, host, addrs)
                new = NameCache(ok, bad, now + min(self.settings.refresh, max(5.0, float(ttl))), None, now)
            except (OSError, dns.DnsError) as e:
                # Keep the last good answer for a while (a resolver hiccup must not cut the
                # agent off); a name never resolved stays without addresses (fail closed).
                keep = c if c and now - c.resolved_at < 2 * self.settings.refresh else None
                new = NameCache(keep.allowed if keep else (), keep.refused if keep else (),
                                now + min(30.0, self.settings.refresh), f"{type(e).__name__}: {e}",
                                keep.resolved_at if keep else 0.0)
            if c is None or (c.allowed, c.refused) != (new.allowed, new.refused):
                changed = True
            self.names[host] = new
        return changed

    # -- the loop body ----------------------------------------------------------------------------
    def desired(self) -> dict[str, list[str]]:
        """principal -> its egress list: each active agent's policy list, and for each pack that
        ran for an agent the entries it was granted that the agent's list still holds."""
        out: dict[str, list[str]] = {}
        for a in active_agents(self.home):
            try:
                out[a] = list(self.profile(a))
            except ConfigError as e:
                # A bad policy file: keep what is loaded (the policy part keeps the last good one).
                prev = self.agents.get(a)
                out[a] = list(prev.items) if prev else []
                self.last_error = "; ".join(e.errors)[:500]
        for principal, granted in list(self.packs.items()):
            agent = netns.agent_of(principal)
            if agent not in out:          # the agent is gone: so are its packs' namespaces
                self.packs.pop(principal, None)
                continue
            out[principal] = [e for e in granted if e in out[agent]]
        return out

    def pack_netns(self, agent: str, pack: str, granted: Iterable[str]) -> str:
        """The namespace `pack`'s calls for `agent` run in, loaded with rules for exactly
        `granted` (the pack's declared entries that the agent's policy allows).

        Never the agent's namespace, whose rules allow the agent's whole list. Cheap when the
        loaded rules already match (no lock, no kernel call: the child's guard checks the chain
        per call); otherwise the pack is registered and everything reconciled at once.
        """
        principal = netns.pack_principal(agent, pack)
        items = tuple(granted)
        path = netns.netns_path(self.home, principal)
        if self.packs.get(principal) == items and self._loaded(principal, items, path):
            return path
        with self.lock:
            self.packs[principal] = items
            self.reconcile()
            if not items:   # nothing granted: a namespace with only `lo`
                return netns.ensure_agent_netns(self.home, principal)
            if not self._loaded(principal, items, path):
                raise err("SandboxUnavailable", f"the egress rules of pack {pack!r} could not be loaded")
            return path

    def _loaded(self, principal: str, items: tuple[str, ...], path: str) -> bool:
        st = self.agents.get(principal)
        if not items:
            return st is None and netns.is_netns(path)
        return st is not None and st.items == items and st.netns == path and netns.is_netns(path)

    def reconcile(self, *, force_resolve: bool = False, deep: bool = False) -> dict[str, Any]:
        """Converge kernel state on the policy. Returns a summary of what changed."""
        with self.lock:
            now = time.time()
            want = self.desired()
            local, lan, links = host_facts()
            forbidden = Forbidden().with_host(local, lan)
            changes: dict[str, Any] = {"added": [], "updated": [], "removed": [], "repaired": []}
            mine = self._my_veths(links)
            host_dirty = self._remove_unwanted(want, mine, changes) or deep
            # 2. principals with egress
            for agent, items in sorted(want.items()):
                if items and self._converge(agent, items, forbidden, mine.get(agent), deep, changes, force_resolve,
                                            now):
                    host_dirty = True
            # 3. host table (and ip_forward)
            if not host_dirty and not self._host_table_ok():
                changes["repaired"].append("host")
                host_dirty = True
            if host_dirty:
                self._apply_host()
            if changes["repaired"]:
                self.repairs = [*self.repairs[-19:], {"at": now, "repaired": list(changes["repaired"])}]
            return changes

    def _remove_unwanted(self, want: dict[str, list[str]], mine: dict[str, str], changes: dict[str, Any]) -> bool:
        """Step 1: principals gone (removed/revoked) or without egress any more. True if the host
        table must be rewritten."""
        dirty = False
        for agent in sorted(set(self.agents) | set(mine)):
            if want.get(agent):
                continue
            self._teardown_links(agent, mine.get(agent))
            self.agents.pop(agent, None)
            self._drop_view(agent)
            changes["removed"].append(agent)
            dirty = True
        for agent in netns.list_agent_netns(self.home):
            if agent not in want:
                netns.remove_agent_netns(agent, self.home)
                self._drop_view(agent)
        return dirty

    def _converge(self, agent: str, items: list[str], forbidden: Forbidden, veth: str | None, deep: bool,
                  changes: dict[str, Any], force_resolve: bool, now: float) -> bool:
        """Step 2 for one principal with egress: links, addresses, its namespace's table. True if
        the host table must be rewritten."""
        entries, errors = parse_entries(items)
        self._resolve_names(entries, forbidden, force_resolve, now)
        st = self.agents.get(agent)
        new_st = st is None or st.items != tuple(items)
        if st is None or new_st:
            st = AgentState(agent, tuple(items), tuple(entries), tuple(errors))
        hosts = {e.host for e in entries if e.host}
        allow = Allowlist(tuple(entries), {h: self.names[h].allowed for h in hosts},
                          {h: self.names[h].refused for h in hosts}, forbidden)
        elements = tuple(allow.nft_elements())
        dirty = False
        # Checked on every pass: a table deleted behind our back is reloaded at once (calls fail
        # closed meanwhile: the sandbox child checks the chain in the kernel per call).
        vanished = not new_st and st.netns is not None and netns.is_netns(st.netns) and not self._ns_table_ok(st)
        if vanished:
            changes["repaired"].append(agent)
        relink = new_st or deep or st.veth is None or not self._link_ok(st)
        if relink:
            self._ensure_links(st, veth)
            dirty = True
        # The agent's reach (entries, resolved names, nft elements) is what the owner is told about;
        # the host's own addresses in `forbidden` move as veths come and go (ours included) and
        # only need the view rewritten, silently (issue 18: egress.changed every ~30 s).
        reach_changed = elements != st.elements or st.allowlist is None or _reach(st.allowlist) != _reach(allow)
        changed = reach_changed or st.allowlist is None or st.allowlist.to_view() != allow.to_view()
        if relink or vanished or changed:
            nft.run_in_netns(st.netns, [ruleset.ns_ruleset(list(elements), self.settings.resolver)])
            dirty = dirty or elements != st.elements
            st.elements, st.allowlist, st.loaded_at = elements, allow, now
            self._write_view(st)
            if new_st or reach_changed:
                changes["added" if new_st else "updated"].append(agent)
        self.agents[agent] = st
        return dirty

    def teardown(self) -> None:
        """Remove everything of this home: host table, veths, namespaces, views."""
        with self.lock:
            _, _, links = host_facts()
            for agent, veth in self._my_veths(links).items():
                self._teardown_links(agent, veth)
            self.agents.clear()
            with contextlib.suppress(nft.NftError, OSError):
                t = {"table": {"family": "inet", "name": ruleset.host_table(self.tag)}}
                nft.run_in_netns(None, [[{"delete": t}]])
            for agent in netns.list_agent_netns(self.home):
                netns.remove_agent_netns(agent, self.home)
                self._drop_view(agent)
            forwarding_needed(False)

    # -- helpers ----------------------------------------------------------------------------------
    def _my_veths(self, links: list[dict[str, Any]]) -> dict[str, str]:
        pre = f"stockade:{self.tag}:"
        return {li["ifalias"][len(pre):]: li["ifname"] for li in links
                if str(li.get("ifalias", "")).startswith(pre) and li.get("ifname", "").startswith("stkv")}

    def _link_ok(self, st: AgentState) -> bool:
        return bool(st.veth and os.path.exists(f"/sys/class/net/{st.veth}") and st.netns
                    and netns.is_netns(st.netns))

    def _teardown_links(self, agent: str, veth: str | None) -> None:
        for v in {veth, veth_name(self.tag, agent)} - {None}:
            if os.path.exists(f"/sys/class/net/{v}"):
                subprocess.run(["ip", "link", "del", str(v)], capture_output=True, timeout=30)
        # the namespace's own table goes with the namespace or is reset to default-deny-all
        path = netns.netns_path(self.home, agent)
        if netns.is_netns(path):
            with contextlib.suppress(nft.NftError, OSError):
                nft.run_in_netns(path, [[{"add": {"table": {"family": "inet", "name": ruleset.NS_TABLE}}},
                                         {"delete": {"table": {"family": "inet", "name": ruleset.NS_TABLE}}}]])

    def _allocate(self, agent: str) -> tuple[str, str]:
        pool = ipaddress.IPv4Network(self.settings.subnet)
        n = pool.num_addresses // 4
        used: set[int] = set()
        for li in _ipj("-4", "addr", "show"):
            for a in li.get("addr_info", []):
                ip = ipaddress.IPv4Address(a["local"])
                if ip in pool:
                    used.add((int(ip) - int(pool.network_address)) // 4)
        start = int(hashlib.sha256(f"{self.tag}:{agent}".encode()).hexdigest(), 16) % n
        for k in range(n):
            i = (start + k) % n
            if i not in used:
                base = int(pool.network_address) + 4 * i
                return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))
        raise err("SandboxUnavailable", f"egress subnet {pool} is exhausted")

    def _ensure_links(self, st: AgentState, existing: str | None) -> None:
        st.netns = netns.ensure_agent_netns(self.home, st.agent)
        name = netns.netns_name(self.home, st.agent)
        veth = veth_name(self.tag, st.agent)
        with _alloc_lock, _Flock("alloc.lock"):
            if existing and os.path.exists(f"/sys/class/net/{existing}"):
                host_ip = self._addr_of(existing)
                inner = _ipj("-n", name, "-4", "addr", "show", "dev", NS_IF) if self._ns_has_if(name) else []
                if host_ip and inner:
                    st.veth, st.host_ip = existing, host_ip
                    st.agent_ip = str(ipaddress.IPv4Address(host_ip) + 1)
                    return
                subprocess.run(["ip", "link", "del", existing], capture_output=True, timeout=30)
            if os.path.exists(f"/sys/class/net/{veth}"):
                subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)
            if self._ns_has_if(name):
                subprocess.run(["ip", "-n", name, "link", "del", NS_IF], capture_output=True, timeout=30)
            host_ip, agent_ip = self._allocate(st.agent)
            host_cmds = (f"link add {veth} type veth peer name {NS_IF} netns {name}\n"
                         f"link set dev {veth} alias {alias(self.tag, st.agent)}\n"
                         f"addr add {host_ip}/30 dev {veth}\n")
            self._batch([], host_cmds)
            with contextlib.suppress(OSError):
                _write_sysctl(f"net.ipv6.conf.{veth}.disable_ipv6", "1")
            self._batch([], f"link set dev {veth} up\n")
            # the namespace's default-deny table goes in before the link is up inside
            nft.run_in_netns(st.netns, [ruleset.ns_ruleset([], self.settings.resolver)])
            self._batch(["-n", name], f"addr add {agent_ip}/30 dev {NS_IF}\nlink set dev {NS_IF} up\n"
                                      f"route replace default via {host_ip} dev {NS_IF}\n")
            st.veth, st.host_ip, st.agent_ip = veth, host_ip, agent_ip

    @staticmethod
    def _batch(prefix: list[str], cmds: str) -> None:
        r = subprocess.run(["ip", *prefix, "-batch", "-"], input=cmds, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise err("SandboxUnavailable", f"egress link setup failed: {r.stderr.strip()[:300]}")

    @staticmethod
    def _ns_has_if(name: str) -> bool:
        r = subprocess.run(["ip", "-n", name, "link", "show", "dev", NS_IF], capture_output=True, timeout=30)
        return r.returncode == 0

    @staticmethod
    def _addr_of(ifname: str) -> str | None:
        for li in _ipj("-4", "addr", "show", "dev", ifname):
            for a in li.get("addr_info", []):
                return str(a["local"])
        return None

    def _host_agents(self) -> list[ruleset.HostAgent]:
        return [ruleset.HostAgent(a, st.veth, st.agent_ip, st.elements)
                for a, st in sorted(self.agents.items()) if st.veth and st.agent_ip]

    def _apply_host(self) -> None:
        agents = self._host_agents()
        self.guard = forwarding_needed(bool(agents))
        if agents:
            nft.run_in_netns(None, [ruleset.host_ruleset(self.tag, agents, self.settings.resolver, self.guard)])
        else:
            with contextlib.suppress(nft.NftError, OSError):
                t = {"table": {"family": "inet", "name": ruleset.host_table(self.tag)}}
                nft.run_in_netns(None, [[{"delete": t}]])

    def _ns_table_ok(self, st: AgentState) -> bool:
        """The agent's namespace table is loaded (one netlink round trip in its namespace)."""
        try:
            nft.run_in_netns(st.netns, [nft.list_table(ruleset.NS_TABLE)])
            return True
        except (nft.NftError, OSError):
            return False

    def _host_table_ok(self) -> bool:
        if not self._host_agents():
            return True
        try:
            nft.run_in_netns(None, [nft.list_table(ruleset.host_table(self.tag))])
            return True
        except nft.NftError:
            return False

    def _write_view(self, st: AgentState) -> None:
        self.view_dir.mkdir(mode=0o700, exist_ok=True)
        view = {"agent": st.agent, "resolver": self.settings.resolver,
                **(st.allowlist.to_view() if st.allowlist else {})}
        write_private(self.view_dir / f"{st.agent}.json", json.dumps(view, sort_keys=True))

    def _drop_view(self, agent: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.view_dir / f"{agent}.json").unlink()

    # -- reporting --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self.lock:
            return {a: {"netns": st.netns, "veth": st.veth, "address": st.agent_ip, "entries": list(st.items),
                        "errors": list(st.errors), "elements": [f"{c}:{p}" for c, p in st.elements],
                        "resolved": {h: {"allowed": list(self.names[h].allowed), "refused": list(self.names[h].refused),
                                         "error": self.names[h].error}
                                     for h in sorted({e.host for e in st.entries if e.host}) if h in self.names}}
                    for a, st in sorted(self.agents.items())}


def child_view(home: Home, agent: str) -> dict[str, Any] | None:
    """The allowlist view for the sandbox child (ctx.extra["egress"]): entries, resolved and
    refused addresses, forbidden ranges, resolver. None when the agent has no egress."""
    path = home.run / "egress" / f"{agent}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _reach(a: Allowlist) -> dict[str, Any]:
    """What an allowlist lets the agent reach, without the host facts it was checked against."""
    view = a.to_view()
    view.pop("forbidden", None)
    return view
