"""Helpers for the supervision end-to-end tests: a home with a test policy, dashboard client.

The helpers' own CLI calls (init, approvals list, audit query, admin token) run in this process
(`quick_json`): they are how a test looks, not what it tests, and `wait_pending` polls."""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from tests.conftest import Server, cli_quick, quick_json, start_server

ORG = """\
version: 1
default: notify
rules:
  - {id: sys-auto, capability: "system.*", tier: autonomous}
  - {id: agent-auto, capability: "agent.*", tier: autonomous}
  - {id: time-needs-ok, capability: system.time, tier: approval_required, reason: the owner wants to know}
  - {id: info-notify, capability: system.info, tier: notify}
  - {id: whoami-notify, capability: agent.whoami, tier: notify}
  # agent.approval has a free-text argument: handy to put hostile strings in front of the owner.
  - {id: lookup-held, capability: agent.approval, tier: approval_required, when: {arg_equals: {wait: 7}}}
  - {id: lookup-notify, capability: agent.approval, tier: notify, when: {arg_equals: {wait: 3}}}
  - {id: proc, capability: "process.*", tier: approval_required}
"""


def make_home(tmp_path: Path, *, hold: float = 60, webhook: str | None = None) -> Path:
    h = tmp_path / "home"
    cli_quick("init", home=h)
    (h / "policies" / "org.yaml").write_text(ORG)
    cfg = yaml.safe_load((h / "stockade.yaml").read_text())
    cfg["approvals"] = {"ttl": "24h", "hold_seconds": hold}
    if webhook:
        cfg["webhook"] = webhook
    (h / "stockade.yaml").write_text(yaml.safe_dump(cfg))
    return h


def serve(home: Path) -> Server:
    return start_server(home)


class Call(threading.Thread):
    """An agent call running in the background (it may be held for the owner)."""

    def __init__(self, server: Server, key: str, capability: str, args: dict[str, Any] | None = None):
        super().__init__(daemon=True)
        self.server, self.key, self.capability, self.args = server, key, capability, args or {}
        self.response: dict[str, Any] | None = None

    def run(self) -> None:
        self.response = self.server.invoke(self.key, self.capability, self.args, timeout=120)

    def result(self, timeout: float = 60) -> dict[str, Any]:
        self.join(timeout)
        assert self.response is not None, "the call did not return"
        return self.response


def wait_pending(home: Path, *, exclude: set[str] = frozenset(), timeout: float = 30) -> dict[str, Any]:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = quick_json("approvals", "list", home=home)["approvals"]
        fresh = [a for a in items if a["approval"] not in exclude]
        if fresh:
            return fresh[0]
        time.sleep(0.1)
    raise AssertionError("no pending approval appeared")


def audit_records(home: Path) -> list[dict[str, Any]]:
    return quick_json("audit", "query", "--limit", "1000", home=home)["records"]


class Dash:
    """An HTTPS client for the dashboard that trusts the home's self-signed certificate."""

    def __init__(self, server: Server):
        self.port = server.ports["dashboard"]
        self.base = f"https://127.0.0.1:{self.port}"
        ctx = ssl.create_default_context(cafile=str(server.home / "keys" / "tls.crt"))
        self.c = httpx.Client(base_url=self.base, verify=ctx, follow_redirects=False, timeout=30)

    def token(self, home: Path) -> str:
        return quick_json("admin", "token", home=home)["token"]

    def login(self, token: str) -> httpx.Response:
        page = self.c.get("/login")
        lc = re.search(r'name="login_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        return self.c.post("/login", data={"token": token, "login_csrf": lc},
                           headers={"origin": self.base})

    def csrf(self) -> str:
        page = self.c.get("/approvals")
        return re.search(r'<meta name="csrf" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def steady_navigation(page: Any, attempts: int = 3) -> Any:
    """`page.goto` retried on Chromium's ERR_NETWORK_CHANGED only.

    Chromium aborts a load in flight when any network interface changes; on a shared CI worker
    other tests create and delete veths and namespaces all the time (egress, perimeter, upstream),
    which has nothing to do with the dashboard under test. Any other error is raised at once."""
    goto = page.goto

    def steady(url: str, **kw: Any) -> Any:
        for attempt in range(attempts):
            try:
                return goto(url, **kw)
            except Exception as e:
                if "ERR_NETWORK_CHANGED" not in str(e) or attempt == attempts - 1:
                    raise
                time.sleep(0.2)
        return None

    page.goto = steady
    return page
