"""KruxOS-shaped JSON-RPC (issue 19): `capabilities.invoke {capability, arguments}` and
`session.end {session_id}` are accepted as aliases of `name` and `session`, through a real gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.conftest import Server, shared_server

# One worker runs the module: its tests share one gateway (a module-scoped fixture).
pytestmark = pytest.mark.xdist_group("gateway-krux")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One gateway for the module: the tests only call it, each with its own agent."""
    yield from shared_server(tmp_path_factory, "krux")


def test_invoke_with_capability_and_session_end_with_session_id(server: Server) -> None:
    key = server.agent("krux")
    r = server.rpc(key, "capabilities.invoke", {"capability": "system.time", "arguments": {}}).json()
    assert "result" in r and r["result"].get("utc"), r
    sid = server.rpc(key, "session.create").json()["result"]["session"]
    r = server.rpc(key, "capabilities.invoke", {"capability": "system.time", "arguments": {}, "session_id": sid}).json()
    assert "result" in r, r
    assert server.rpc(key, "session.end", {"session_id": sid}).json()["result"] == {"ended": True}
    gone = server.rpc(key, "session.end", {"session_id": sid}).json()
    assert gone["error"]["data"]["type"] == "InvalidInput", gone


def test_an_alias_and_its_name_together_are_refused(server: Server) -> None:
    key = server.agent("krux2")
    r = server.rpc(key, "capabilities.invoke", {"capability": "system.time", "name": "system.time"}).json()
    assert r["error"]["data"]["type"] == "InvalidInput" and "capability" in r["error"]["message"], r
    r = server.rpc(key, "session.end", {"session_id": "ses_x", "session": "ses_x"}).json()
    assert r["error"]["data"]["type"] == "InvalidInput", r
    r = server.rpc(key, "capabilities.invoke", {"capability": 7}).json()
    assert r["error"]["data"]["type"] == "InvalidInput", r
