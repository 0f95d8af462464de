"""Egress against the real kernel: namespaces, veths, nftables, test hosts in our own netns.

Attacks are made twice: through the capability handlers (run inside the agent's namespace) and
through raw sockets from inside the namespace, which bypass every check of the handlers, so the
nftables layer is shown to hold on its own. A control test removes the tables and shows the
same raw connections then succeed (the refusals come from the layer, not from the topology).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from tests.conftest import cli_quick
from tests.egress.topo import A_IP, B_IP, META_IP, P_IP, R_IP, TestHost, capability, raw_connect

from stockade.core import agents
from stockade.core.home import Home
from stockade.egress import netns, nft, ruleset
from stockade.egress.manager import Egress, child_view, load_settings, profile_source, veth_name

pytestmark = [pytest.mark.xdist_group("egress-netns")]



@pytest.fixture
def host_service():  # type: ignore[no-untyped-def]
    """A service of the host itself, listening on all addresses (what an agent must not reach)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    s.listen(16)
    hits: list[str] = []

    def loop() -> None:
        while True:
            try:
                c, peer = s.accept()
            except OSError:
                return
            hits.append(peer[0])
            c.close()

    threading.Thread(target=loop, daemon=True).start()
    yield s.getsockname()[1], hits
    s.close()


def eventually(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def make_home(tmp: Path, egress: list[str], resolver: str | None = None, agent: str = "alice") -> Home:
    h = tmp / "home"
    cli_quick("init", home=h)   # setup: in this process
    with open(h / "stockade.yaml", "a") as f:
        f.write(f"egress:\n  resolver: {resolver or 'null'}\n  poll: 0.5s\n")
    home = Home.at(h)
    conn = home.db()
    agents.create(conn, agent)
    conn.commit()
    conn.close()
    set_egress(home, agent, egress)
    return home


def set_egress(home: Home, agent: str, egress: list[str]) -> None:
    items = "".join(f"\n    - {e!r}" for e in egress) if egress else " []"
    (home.policies / "agents" / f"{agent}.yaml").write_text(f"version: 1\nsandbox:\n  egress:{items}\n")


@pytest.fixture
def manager(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Egress] = []

    def make(egress: list[str], resolver: str | None = None) -> Egress:
        home = make_home(tmp_path, egress, resolver)
        eg = Egress(home, load_settings(home), profile_source(home))
        made.append(eg)
        return eg

    yield make
    for eg in made:
        eg.teardown()


def table_loaded(path: str | None, table: str) -> bool:
    try:
        nft.run_in_netns(path, [nft.list_table(table)])
        return True
    except nft.NftError:
        return False


def remove_tables(eg: Egress) -> None:
    """Switch the layer off (control experiments only)."""
    for path, table in ((eg.agents["alice"].netns, ruleset.NS_TABLE), (None, ruleset.host_table(eg.tag))):
        t = {"table": {"family": "inet", "name": table}}
        nft.run_in_netns(path, [[{"delete": t}]])


FORBIDDEN_TARGETS = [("a", A_IP, 8081), ("b", B_IP, 8080), ("p", P_IP, 8080), ("m", META_IP, 80),
                     ("m", META_IP, 8080)]


# -- the nftables layer on its own (raw sockets) ------------------------------------------------------
def test_raw_sockets_only_reach_the_allowlist(net, manager, host_service) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    before = {k: len(h.connections()) for k, h in net.items()}
    a8081 = len(net["a"].connections(8081))
    assert raw_connect(st.netns, A_IP, 8080)["connected"]
    assert eventually(lambda: net["a"].connections(8080))   # the server logs after accept()
    for _name, ip, port in FORBIDDEN_TARGETS:
        r = raw_connect(st.netns, ip, port, timeout=2)
        assert not r["connected"], (ip, port)
    port, hits = host_service
    for ip in (st.host_ip, "192.0.2.2", "127.0.0.1"):
        assert not raw_connect(st.netns, ip, port, timeout=2)["connected"], ip
    assert hits == []
    assert len(net["a"].connections(8081)) == a8081
    assert {k: len(net[k].connections()) - before[k] for k in "bpm"} == {"b": 0, "p": 0, "m": 0}


def test_control_without_the_layer_the_same_connections_succeed(net, manager, host_service) -> None:  # type: ignore[no-untyped-def]
    """Shows the refusals above come from nftables: with both tables removed, they all connect."""
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    remove_tables(eg)
    before = {k: len(h.connections()) for k, h in net.items()}
    for _name, ip, port in FORBIDDEN_TARGETS:
        assert raw_connect(st.netns, ip, port)["connected"], (ip, port)
    # every one reached its server (and is logged before the next test counts)
    assert eventually(lambda: len(net["a"].connections()) == before["a"] + 1
                      and len(net["b"].connections()) == before["b"] + 1
                      and len(net["p"].connections()) == before["p"] + 1
                      and len(net["m"].connections()) == before["m"] + 2)
    port, hits = host_service
    assert raw_connect(st.netns, st.host_ip, port)["connected"]
    assert eventually(lambda: hits)
    # the deep check puts the layer back
    eg.reconcile(deep=True)
    assert table_loaded(st.netns, ruleset.NS_TABLE) and table_loaded(None, ruleset.host_table(eg.tag))
    assert not raw_connect(st.netns, B_IP, 8080, timeout=2)["connected"]


def test_no_egress_means_no_network(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([])
    eg.reconcile()
    assert "alice" not in eg.agents
    path = netns.ensure_agent_netns(eg.home, "alice")   # what the sandbox joins: lo only
    assert not raw_connect(path, A_IP, 8080, timeout=2)["connected"]
    assert not os.path.exists(f"/sys/class/net/{veth_name(eg.tag, 'alice')}")


# -- the capability handlers, inside the agent's namespace ----------------------------------------------
def test_http_request_allowed_and_refused(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    view = child_view(eg.home, "alice")
    assert view and view["entries"] == [f"{A_IP}:8080"]
    r = capability(st.netns, "alice", view, "http_request", {"url": f"http://{A_IP}:8080/hello"})
    assert r["ok"]["status"] == 200 and r["ok"]["body"] == f"hello from {A_IP}:8080"
    r = capability(st.netns, "alice", view, "http_request", {"url": f"http://{A_IP}:8080/binary"})
    assert r["ok"]["body_encoding"] == "base64"


@pytest.mark.parametrize("url", [
    "http://{A}:8081/hello", "http://{B}:8080/hello", "http://{P}:8080/hello",
    "http://{M}/latest/meta-data/", "http://{M}:8080/", "http://2852039166/",  # 169.254.169.254
    "http://0xa9fea9fe/", "http://u:p@{A}:8080/hello", "http://[::1]:8080/", "ftp://198.51.100.10:8080/",
    "http://127.0.0.1:8080/", "http://localhost:8080/",
    "http://{A}:8080/redirect?to=http://{B}:8080/hello",
    "http://{A}:8080/redirect?to=http://{M}/",
    "http://{A}:8080/redirect?to=http://{A}:8081/hello",
    "http://{A}:8080/redirect?to=file:///etc/passwd",
])
def test_http_request_refusals_hold_without_nftables(net, manager, url) -> None:  # type: ignore[no-untyped-def]
    """The handler's own checks refuse before connecting, even with the nftables layer removed."""
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    view = child_view(eg.home, "alice")
    remove_tables(eg)
    before = {k: len(h.connections()) for k, h in net.items()}
    url = url.format(A=A_IP, B=B_IP, P=P_IP, M=META_IP)
    r = capability(st.netns, "alice", view, "http_request", {"url": url})
    assert r.get("error", {}).get("type") == "EgressDenied", r
    after = {k: len(h.connections()) for k, h in net.items()}
    assert {k: after[k] - before[k] for k in after if k != "a"} == {"b": 0, "p": 0, "m": 0}
    assert not any(":8081" in c for c in net["a"].connections()[before["a"]:])


def test_http_request_limits(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    view = child_view(eg.home, "alice")

    def call(args: dict) -> dict:
        return capability(st.netns, "alice", view, "http_request", args)

    assert call({"url": f"http://{A_IP}:8080/big?n=5000", "max_bytes": 4096})["error"]["type"] == "ResourceExhausted"
    assert call({"url": f"http://{A_IP}:8080/endless", "max_bytes": 100000})["error"]["type"] == "ResourceExhausted"
    assert call({"url": f"http://{A_IP}:8080/drip", "timeout": 1})["error"]["type"] == "Timeout"
    r = call({"url": f"http://{A_IP}:8080/redirect?to=/hello"})
    assert r["ok"]["status"] == 200 and r["ok"]["redirects"] == [f"http://{A_IP}:8080/hello"]
    r = call({"url": f"http://{A_IP}:8080/echo", "method": "POST", "body": "hi",
              "headers": {"Authorization": "Bearer s3cret", "X-T": "1"}})
    assert '"body": "hi"' in r["ok"]["body"]
    assert call({"url": f"http://{A_IP}:8080/echo", "headers": {"X": "a\r\nHost: evil"}})["error"]["type"] == \
        "InvalidInput"


def test_cross_origin_redirect_drops_credentials(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080", f"{B_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    view = child_view(eg.home, "alice")
    hdrs = {"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-Keep": "yes"}
    same = capability(st.netns, "alice", view, "http_request",
                      {"url": f"http://{A_IP}:8080/redirect?to=/echo", "headers": hdrs})["ok"]
    assert '"Authorization": "Bearer s3cret"' in same["body"]
    other = capability(st.netns, "alice", view, "http_request",
                       {"url": f"http://{A_IP}:8080/redirect?to=http://{B_IP}:8080/echo", "headers": hdrs})["ok"]
    assert other["url"] == f"http://{B_IP}:8080/echo"
    assert "s3cret" not in other["body"] and "sid=1" not in other["body"] and '"X-Keep": "yes"' in other["body"]


def test_port_check_and_dns_lookup_limited(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080", f"{A_IP}:8082"])
    eg.reconcile()
    st = eg.agents["alice"]
    view = child_view(eg.home, "alice")
    assert capability(st.netns, "alice", view, "port_check", {"host": A_IP, "port": 8080})["ok"]["open"] is True
    assert capability(st.netns, "alice", view, "port_check", {"host": A_IP, "port": 8082})["ok"]["open"] is False
    for host, port in ((A_IP, 8081), (B_IP, 8080), (META_IP, 80), (P_IP, 8080)):
        r = capability(st.netns, "alice", view, "port_check", {"host": host, "port": port})
        assert r["error"]["type"] == "EgressDenied"
    r = capability(st.netns, "alice", view, "dns_lookup", {"name": "not-listed.example"})
    assert r["error"]["type"] == "EgressDenied"


# -- DNS rebinding --------------------------------------------------------------------------------------
def test_dns_rebinding_opens_no_forbidden_connection(net, manager, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = "api.rebind.test"
    resolver = TestHost(5, R_IP, tmp_path).up().serve_dns(name, A_IP, P_IP)   # 1st answer A, then P
    p_before = len(net["p"].connections())
    try:
        eg = manager([f"{name}:8080"], resolver=R_IP)
        eg.reconcile()
        st = eg.agents["alice"]
        assert len(resolver.queries()) == 1
        view1 = child_view(eg.home, "alice")
        assert view1["resolved"] == {name: [A_IP]}
        r = capability(st.netns, "alice", view1, "http_request", {"url": f"http://{name}:8080/hello"})
        assert r["ok"]["body"] == f"hello from {A_IP}:8080" and r["ok"]["address"] == f"{A_IP}:8080"
        assert len(resolver.queries()) == 1             # the handler did not ask DNS again

        eg.reconcile()                                  # not expired yet: no query
        assert len(resolver.queries()) == 1
        eg.names[name].expires = 0                      # TTL ran out: the periodic pass refreshes
        eg.reconcile()                                  # ... and the resolver now says P (private)
        assert len(resolver.queries()) == 2
        view2 = child_view(eg.home, "alice")
        assert view2["resolved"] == {name: []} and view2["refused"] == {name: [P_IP]}
        assert eg.status()["alice"]["resolved"][name]["refused"] == [P_IP]
        r = capability(st.netns, "alice", view2, "http_request", {"url": f"http://{name}:8080/hello"})
        assert r["error"]["type"] == "EgressDenied"
        # a stale view still names only the checked address: it goes to A (now refused by nft), never P
        r = capability(st.netns, "alice", view1, "http_request", {"url": f"http://{name}:8080/hello"})
        assert "error" in r
        # live lookup from inside the namespace: the forbidden answer is reported, not reachable
        r = capability(st.netns, "alice", view2, "dns_lookup", {"name": name})
        assert r["ok"]["refused"] == [P_IP] and r["ok"]["reachable"] == []
        assert not raw_connect(st.netns, P_IP, 8080, timeout=2)["connected"]
        assert not raw_connect(st.netns, A_IP, 8080, timeout=2)["connected"]   # the set followed DNS
        assert len(net["p"].connections()) == p_before
    finally:
        resolver.down()


DNS_QUERY = """
import json, sys
from stockade.egress import dns
try:
    a = dns.query(sys.argv[1], sys.argv[2], timeout=2)
    print(json.dumps({"answer": list(a.addresses)}))
except (dns.DnsError, OSError) as e:
    print(json.dumps({"error": str(e)}))
"""


def test_dns_only_to_the_configured_resolver(net, manager, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.egress.topo import in_ns

    name = "api.dns.test"
    good = TestHost(5, R_IP, tmp_path).up().serve_dns(name, A_IP)
    other = TestHost(6, "203.0.113.54", tmp_path).up().serve_dns(name, A_IP)
    try:
        eg = manager([f"{name}:8080"], resolver=R_IP)
        eg.reconcile()
        st = eg.agents["alice"]
        assert in_ns(st.netns, DNS_QUERY, R_IP, name)["answer"] == [A_IP]
        assert "error" in in_ns(st.netns, DNS_QUERY, "203.0.113.54", name)
        assert other.queries() == []
    finally:
        good.down()
        other.down()


# -- lifecycle --------------------------------------------------------------------------------------------
def test_hot_reload_follows_policy(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    veth = st.veth
    assert raw_connect(st.netns, A_IP, 8080)["connected"]
    set_egress(eg.home, "alice", [f"{B_IP}:8080"])
    changes = eg.reconcile()
    assert changes["added"] == ["alice"] or changes["updated"] == ["alice"]
    assert eg.agents["alice"].veth == veth             # the link is kept; only rules change
    assert not raw_connect(st.netns, A_IP, 8080, timeout=2)["connected"]
    assert raw_connect(st.netns, B_IP, 8080)["connected"]
    set_egress(eg.home, "alice", [])
    eg.reconcile()
    assert not os.path.exists(f"/sys/class/net/{veth}")
    assert not table_loaded(None, ruleset.host_table(eg.tag))


def test_agent_removal_removes_namespace_veth_rules(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    assert netns.is_netns(st.netns) and os.path.exists(f"/sys/class/net/{st.veth}")
    conn = eg.home.db()
    agents.revoke(conn, "alice")
    conn.commit()
    conn.close()
    eg.reconcile()
    assert not os.path.exists(st.netns)
    assert not os.path.exists(f"/sys/class/net/{st.veth}")
    assert not table_loaded(None, ruleset.host_table(eg.tag))
    assert child_view(eg.home, "alice") is None


def test_restart_restores_rules(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    st = eg.agents["alice"]
    # crash (no teardown): a new manager converges on what is there, reusing the link
    eg2 = Egress(eg.home, eg.settings, eg.profile)
    eg2.reconcile(deep=True)
    assert eg2.agents["alice"].veth == st.veth and eg2.agents["alice"].agent_ip == st.agent_ip
    # clean stop: everything goes; start: everything comes back
    eg2.teardown()
    assert not os.path.exists(st.netns) and not table_loaded(None, ruleset.host_table(eg.tag))
    eg3 = Egress(eg.home, eg.settings, eg.profile)
    eg3.reconcile(deep=True)
    st3 = eg3.agents["alice"]
    assert table_loaded(st3.netns, ruleset.NS_TABLE) and table_loaded(None, ruleset.host_table(eg.tag))
    assert raw_connect(st3.netns, A_IP, 8080)["connected"]
    assert not raw_connect(st3.netns, B_IP, 8080, timeout=2)["connected"]
    eg3.teardown()


def test_ip_forward_restored(net, manager) -> None:  # type: ignore[no-untyped-def]
    orig_file = Path("/run/stockade/ip_forward.orig")
    before = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    eg = manager([f"{A_IP}:8080"])
    eg.reconcile()
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    eg.teardown()
    others = any(n.startswith("stkv") for n in os.listdir("/sys/class/net"))
    if not others and not orig_file.exists():
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == before or before == "1"


def test_doctor_reports_agents(net, manager) -> None:  # type: ignore[no-untyped-def]
    eg = manager([f"{A_IP}:8080", "api.none.test:443"])
    eg.reconcile()
    from stockade.egress.setup import doctor

    d = doctor(eg.home)["egress"]
    a = d["agents"]["alice"]
    assert a["netns"] == eg.agents["alice"].netns and a["rules_loaded"] is True and d["host_table"] is True
    assert "api.none.test" in a["resolved"]
    subprocess.run(["true"])
