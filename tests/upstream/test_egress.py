"""An upstream server reaches exactly its allowlist that its agent's policy also allows.

Real gateway, real kernel, the egress part running: two test hosts on one port stand in for
public servers, A = 198.51.100.71:8080 and B = 203.0.113.72:8080 (TEST-NET-2/3 in namespaces we
create). Agent `wide` may reach both by its policy, agent `narrow` neither. The probe server is
configured with egress A only. Landlock allows port 8080 (A's), so only the instance's network
namespace and its nftables stand between the server and B.

It may also reach A by a name, `api.up.test:8080`, answered by a test resolver R: the sandbox
has no resolver of its own, so the name reaches the server as a line of its /etc/hosts, with
the addresses the egress part resolved (exactly those its rules let through).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from tests.conftest import need, need_root, run_cli, start_server
from tests.egress.topo import TestHost

from stockade.upstream.config import runtime_dirs

pytestmark = [pytest.mark.root, pytest.mark.xdist_group("egress-netns")]

A, B, PORT = "198.51.100.71", "203.0.113.72", 8080
R, NAME = "203.0.113.73", "api.up.test"
HERE = Path(__file__).resolve().parent
PY = HERE.parents[1] / ".test-servers" / "py" / "bin"


def _wait(cond: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    need_root()
    tmp_path = tmp_path_factory.mktemp("upstream-egress")
    need((PY / "python").exists(), "the upstream test servers are not installed (make test installs them)")
    hosts = [TestHost(31, A, tmp_path), TestHost(32, B, tmp_path)]
    resolver = TestHost(33, R, tmp_path)
    try:
        for h in hosts:
            h.up().serve_http(PORT)
        resolver.up().serve_dns(NAME, A)
        home = tmp_path / "home"
        run_cli("init", home=home)
        with open(home / "stockade.yaml", "a") as f:
            f.write(f"egress:\n  resolver: {R}\n  poll: 1h\n")
        (home / "policies" / "org.yaml").write_text("version: 1\ndefault: autonomous\nrules: []\n")
        (home / "policies" / "agents" / "wide.yaml").write_text(
            f"version: 1\nsandbox:\n  egress: ['{A}:{PORT}', '{B}:{PORT}', '{NAME}:{PORT}']\n")
        dirs = sorted({*runtime_dirs(str(PY / "python")), str(PY.parent), str(HERE)})
        (home / "upstream.yaml").write_text(yaml.safe_dump({"servers": {"probe": {
            "command": str(PY / "python"), "args": [str(HERE / "probe_server.py")],
            "egress": [f"{A}:{PORT}", f"{NAME}:{PORT}"], "filesystem": [{"path": d} for d in dirs],
            "startup_timeout": 120}}}))
        srv = start_server(home, timeout=180)
        try:
            yield SimpleNamespace(srv=srv, home=home, a=hosts[0], b=hosts[1],
                                  wide=srv.agent("wide"), narrow=srv.agent("narrow"))
        finally:
            srv.stop()
    finally:
        for h in [*hosts, resolver]:
            h.down()


def _connect(w: SimpleNamespace, key: str, ip: str) -> str:
    r = w.srv.invoke(key, "probe.connect", {"host": ip, "port": PORT})
    assert "result" in r, r
    return "\n".join(c.get("text", "") for c in r["result"]["content"])


def test_upstream_reaches_its_allowlist_and_nothing_else(world: SimpleNamespace) -> None:
    w = world
    # the agent may reach B, so only the server's own rules can stop it
    assert _wait(lambda: _connect(w, w.wide, A) == "connected"), _connect(w, w.wide, A)
    b_before = len(w.b.connections(PORT))
    for _ in range(3):
        assert _connect(w, w.wide, B).startswith("error"), "the server reached B outside its allowlist"
    assert len(w.b.connections(PORT)) == b_before
    # an agent whose policy does not allow A: its instance of the same server reaches nothing
    assert _connect(w, w.narrow, A).startswith("error")
    assert _connect(w, w.narrow, B).startswith("error")


def test_upstream_reaches_an_allowlisted_name(world: SimpleNamespace) -> None:
    w = world
    a_before = len(w.a.connections(PORT))
    assert _wait(lambda: _connect(w, w.wide, NAME) == "connected"), _connect(w, w.wide, NAME)
    deadline = time.monotonic() + 10      # the test host logs the connection on its own thread
    while len(w.a.connections(PORT)) <= a_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(w.a.connections(PORT)) > a_before
    # not granted to narrow (its policy does not allow the name): its instance cannot even resolve it
    out = _connect(w, w.narrow, NAME)
    assert out.startswith("error") and "gaierror" in out, out
