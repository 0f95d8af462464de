"""The ntfy-compatible webhook (issue 18, traders: approvals reach the owner away from the
dashboard): `webhook: ntfy+http(s)://host/topic` posts the escaped text line with Title, Priority
and Tags headers, for what needs a person only; the generic JSON format is unchanged."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from tests.conftest import quick_json

from stockade.core.events import Event
from stockade.supervision.webhook import ntfy_request, target

from .helpers import Call, make_home, serve, wait_pending


def test_target_picks_the_format_from_the_url() -> None:
    assert target("ntfy+https://ntfy.sh/my-topic") == ("ntfy", "https://ntfy.sh/my-topic")
    assert target("https://hooks.example.org/x") == ("json", "https://hooks.example.org/x")


def test_ntfy_request_for_an_approval_is_a_readable_alert() -> None:
    ev = Event("approval.requested", {"agent": "trader", "capability": "exchange.place_order",
                                      "args": {"notional": "500"}, "approval": "apr_1"}, "warning")
    req = ntfy_request(ev)
    assert req is not None
    body, headers = req
    assert headers["Title"] == "stockade: approval needed" and headers["Priority"] == "4"
    assert "question" in headers["Tags"] and all(v.isascii() for v in headers.values())
    assert b"trader -> exchange.place_order" in body and b"500" in body


def test_ntfy_skips_routine_events_and_escapes_spoofs() -> None:
    assert ntfy_request(Event("call.notify", {"agent": "a", "capability": "system.info"}, "info")) is None
    spoof = Event("approval.requested", {"agent": "m", "capability": "process.run",
                                         "args": {"argv": ["echo", "\u2067x\u2069"]}}, "warning")
    body, headers = ntfy_request(spoof)  # type: ignore[misc]
    assert "\u2067" not in body.decode() and "\\u2067" in body.decode() and "warning" in headers["Tags"]


class _Ntfy(BaseHTTPRequestHandler):
    got: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).got.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def ntfy() -> Iterator[HTTPServer]:
    _Ntfy.got = []
    srv = HTTPServer(("127.0.0.1", 0), _Ntfy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def test_a_held_call_reaches_an_ntfy_topic(ntfy: HTTPServer, tmp_path: Any) -> None:
    home = make_home(tmp_path, webhook=f"ntfy+http://127.0.0.1:{ntfy.server_address[1]}/stockade-alerts")
    srv = serve(home)
    try:
        call = Call(srv, srv.agent("trader"), "agent.approval", {"approval": "buy 5 BTC", "wait": 7})
        call.start()
        a = wait_pending(home)
        quick_json("approvals", "reject", a["approval"], home=home)   # a means here: in this process
        call.result()
    finally:
        srv.stop()
    posts = [(p, h, b) for p, h, b in _Ntfy.got if h.get("Title") == "stockade: approval needed"]
    assert posts, _Ntfy.got
    path, headers, body = posts[0]
    assert path == "/stockade-alerts" and headers["Priority"] == "4"
    assert b"trader" in body and b"buy 5 BTC" in body and not body.startswith(b"{")
