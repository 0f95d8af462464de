"""Egress through the real gateway (`stockade serve`): rules follow the server's life and the
policy, and network.http_request runs in the agent's sandbox + namespace."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from tests.conftest import cli_quick, need, need_root, quick_json, start_server
from tests.egress.topo import A_IP, B_IP, META_IP, R_IP, TestHost, raw_connect

from stockade.core.home import Home
from stockade.egress import netns, nft, ruleset

pytestmark = [pytest.mark.xdist_group("egress-netns")]


def loaded(path: str | None, table: str) -> bool:
    try:
        nft.run_in_netns(path, [nft.list_table(table)])
        return True
    except (nft.NftError, OSError):
        return False


def wait(cond, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def write_policy(h: Path, egress: list[str]) -> None:
    items = "".join(f"\n    - {e!r}" for e in egress) if egress else " []"
    (h / "policies" / "agents" / "alice.yaml").write_text(f"version: 1\nsandbox:\n  egress:{items}\n")


@pytest.fixture
def ghome(tmp_path: Path) -> Path:
    need_root()
    h = tmp_path / "home"
    # network.* at notify: runs without approval. The CLI (here and below) runs in this process:
    # it sets up and reads state, the egress layer is under test
    cli_quick("init", "--policy", "open", home=h)
    with open(h / "stockade.yaml", "a") as f:
        f.write("egress:\n  resolver: null\n  poll: 0.3s\n")
    return h


def test_serve_lifecycle_and_http_request(net, ghome: Path) -> None:  # type: ignore[no-untyped-def]
    home = Home.at(ghome)
    key = quick_json("agent", "create", "alice", home=ghome)["key"]
    write_policy(ghome, [f"{A_IP}:8080"])
    path = netns.netns_path(home, "alice")
    host_table = ruleset.host_table(netns.home_tag(home))
    srv = start_server(ghome)
    try:
        assert wait(lambda: loaded(path, ruleset.NS_TABLE) and loaded(None, host_table))
        r = srv.invoke(key, "network.http_request", {"url": f"http://{A_IP}:8080/hello"})
        sandbox_error = r["error"] if r.get("error", {}).get("data", {}).get("type") == "SandboxUnavailable" else None
        if sandbox_error is None:   # (the lifecycle checks below run either way)
            assert r["result"]["status"] == 200, r
            for url in (f"http://{B_IP}:8080/hello", f"http://{META_IP}/", f"http://{A_IP}:8081/"):
                r = srv.invoke(key, "network.http_request", {"url": url})
                assert r["error"]["data"]["type"] == "EgressDenied", r
        # hot reload: the policy changes, the rules follow without a restart
        write_policy(ghome, [f"{B_IP}:8080"])
        assert wait(lambda: not raw_connect(path, A_IP, 8080, timeout=1)["connected"]
                    and raw_connect(path, B_IP, 8080, timeout=1)["connected"])
    finally:
        assert srv.stop() is not None
    # stop tears everything of this home down
    assert not os.path.exists(path) and not loaded(None, host_table)
    # restart restores it
    srv = start_server(ghome)
    try:
        assert wait(lambda: loaded(path, ruleset.NS_TABLE) and loaded(None, host_table))
        assert raw_connect(path, B_IP, 8080)["connected"]
        assert not raw_connect(path, A_IP, 8080, timeout=1)["connected"]
        doc = quick_json("doctor", home=ghome, check=False)["checks"]["egress"]
        assert doc["agents"]["alice"]["rules_loaded"] is True and doc["agents"]["alice"]["netns"] == path
        # removing the agent removes namespace, veth and rules while the server runs
        cli_quick("agent", "revoke", "alice", home=ghome)
        assert wait(lambda: not os.path.exists(path) and not loaded(None, host_table))
    finally:
        srv.stop()
    # every change of an agent's reach is in the audit log
    out = cli_quick("audit", "query", "--kind", "egress.changed", "--json", home=ghome).stdout
    assert f"{B_IP}/32:8080" in out and "alice" in out
    need(sandbox_error is None, f"sandbox runtime unavailable here: {sandbox_error}")


def test_crash_then_restart_converges(net, ghome: Path) -> None:  # type: ignore[no-untyped-def]
    home = Home.at(ghome)
    quick_json("agent", "create", "alice", home=ghome)
    write_policy(ghome, [f"{A_IP}:8080"])
    path = netns.netns_path(home, "alice")
    srv = start_server(ghome)
    try:
        assert wait(lambda: loaded(path, ruleset.NS_TABLE))
    finally:
        srv.stop(sig=9)
    srv = start_server(ghome)
    try:
        assert wait(lambda: loaded(path, ruleset.NS_TABLE))
        assert raw_connect(path, A_IP, 8080)["connected"]
        assert not raw_connect(path, B_IP, 8080, timeout=1)["connected"]
    finally:
        srv.stop()
    assert not os.path.exists(path)


def test_hostname_entry_through_the_gateway(net, ghome: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The allowlist view (resolved at policy load) reaches the handler in the sandbox child."""
    name = "api.gw.test"
    resolver = TestHost(7, R_IP, tmp_path).up().serve_dns(name, A_IP)
    try:
        cfg = (ghome / "stockade.yaml").read_text().replace("resolver: null", f"resolver: {R_IP}")
        (ghome / "stockade.yaml").write_text(cfg)
        key = quick_json("agent", "create", "alice", home=ghome)["key"]
        write_policy(ghome, [f"{name}:8080"])
        srv = start_server(ghome)
        try:
            path = netns.netns_path(Home.at(ghome), "alice")
            assert wait(lambda: loaded(path, ruleset.NS_TABLE))
            r = srv.invoke(key, "network.http_request", {"url": f"http://{name}:8080/hello"})
            assert r["result"]["body"] == f"hello from {A_IP}:8080", r
            n = len(resolver.queries())
            r = srv.invoke(key, "network.dns_lookup", {"name": name})
            assert r["result"]["reachable"] == [A_IP] and len(resolver.queries()) == n + 1
            r = srv.invoke(key, "network.http_request", {"url": f"http://{name}:8080/hello", "_egress": {}})
            assert r["error"]["data"]["type"] == "InvalidInput"      # the private argument cannot be forged
            r = srv.invoke(key, "network.http_request", {"url": f"http://{name}:8081/hello"})
            assert r["error"]["data"]["type"] == "EgressDenied"
        finally:
            srv.stop()
    finally:
        resolver.down()


def test_process_run_raw_sockets_hold_at_nftables(net, ghome: Path) -> None:  # type: ignore[no-untyped-def]
    """A command the agent runs (process.run, all five sandbox layers) opens its own sockets: only the
    allowlisted host:port answers. B, P and M on port 8080 pass Landlock (8080 is an egress port),
    so what refuses them is nftables."""
    from tests.egress.topo import P_IP, RAW_CONNECT

    key = quick_json("agent", "create", "alice", home=ghome)["key"]
    write_policy(ghome, [f"{A_IP}:8080"])
    srv = start_server(ghome)
    try:
        path = netns.netns_path(Home.at(ghome), "alice")
        assert wait(lambda: loaded(path, ruleset.NS_TABLE))

        def run(ip: str, port: int) -> dict:
            r = srv.invoke(key, "process.run", {"argv": ["python3", "-c", RAW_CONNECT, ip, str(port), "2"],
                                                "timeout": 20})
            if r.get("error", {}).get("data", {}).get("type") == "SandboxUnavailable":
                need(False, f"sandbox runtime unavailable here: {r['error']}")
            assert "result" in r and r["result"]["exit_code"] == 0, r
            import json

            return json.loads(r["result"]["stdout"].strip().splitlines()[-1])

        before = {k: len(h.connections()) for k, h in net.items()}
        assert run(A_IP, 8080)["connected"]
        for ip, port in ((B_IP, 8080), (P_IP, 8080), (META_IP, 8080), (META_IP, 80), (A_IP, 8081)):
            assert not run(ip, port)["connected"], (ip, port)
        assert {k: len(net[k].connections()) - before[k] for k in "bpm"} == {"b": 0, "p": 0, "m": 0}
    finally:
        srv.stop()
