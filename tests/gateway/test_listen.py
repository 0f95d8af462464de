"""`subscriptions/listen` for stateless 2026-07-28 clients (issue 19, "Live lists"), through a real
gateway: acknowledged first, every frame carries the subscription id, only the requested kinds."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tests.conftest import Server, start_server
from tests.policy.test_gateway_policy import ORG, write_org

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}}
BASE = ORG.replace("tier: blocked, reason: health is private here", "tier: autonomous")


def listen(server: Server, key: str, rid: str, notifications: dict[str, Any], frames: list[dict[str, Any]],
           stop: threading.Event) -> None:
    body = {"jsonrpc": "2.0", "id": rid, "method": "subscriptions/listen",
            "params": {"notifications": notifications, "_meta": META}}
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "Mcp-Protocol-Version": "2026-07-28",
               "Mcp-Method": "subscriptions/listen"}
    with httpx.stream("POST", f"{server.url}/mcp", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip():
                frames.append(json.loads(line[5:]))
            if stop.is_set():
                return


def _wait(pred: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not pred():
        time.sleep(0.1)


def test_listen_streams_are_acknowledged_stamped_and_filtered(home: Path) -> None:
    write_org(home, BASE)
    s = start_server(home)
    try:
        key = s.agent("lis")
        tools: list[dict[str, Any]] = []
        prompts: list[dict[str, Any]] = []
        stop = threading.Event()
        threads = [threading.Thread(target=listen, args=(s, key, "sub-tools", {"toolsListChanged": True}, tools, stop),
                                    daemon=True),
                   threading.Thread(target=listen, args=(s, key, "sub-prompts", {"promptsListChanged": True}, prompts,
                                                         stop), daemon=True)]
        for t in threads:
            t.start()
        _wait(lambda: tools and prompts)
        for frames, rid in ((tools, "sub-tools"), (prompts, "sub-prompts")):
            ack = frames[0]
            assert ack["method"] == "notifications/subscriptions/acknowledged", ack
            assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == rid, ack
        assert tools[0]["params"]["notifications"] == {"toolsListChanged": True}, tools[0]
        # The policy hides a capability: the tools listener is told, the prompts listener is not.
        write_org(home, BASE.replace("{id: t-auto, capability: system.time, tier: autonomous}",
                                     "{id: t-auto, capability: system.time, tier: blocked}"))
        _wait(lambda: len(tools) > 1)
        changed = tools[1]
        assert changed["method"] == "notifications/tools/list_changed", tools
        assert changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-tools", changed
        time.sleep(1)
        assert [f["method"] for f in prompts] == ["notifications/subscriptions/acknowledged"], prompts
        stop.set()
    finally:
        s.stop()
