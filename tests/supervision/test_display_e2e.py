"""Issue 14 item 9 end to end: an agent hides `rm -rf` behind direction-control characters. Through
the real gateway, what the owner reads (dashboard pages, `approvals show/list`, `watch`, `audit`,
the webhook) shows every such character as a visible escape, and the approval carries a warning."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from tests.conftest import STOCKADE, Server, quick_json, run_cli

from .helpers import Call, Dash, make_home, serve, wait_pending

pytestmark = pytest.mark.xdist_group("supervision-display")

SPOOF = "echo \u2067\u2066; rm -rf /workspace/project \u2069 # \u2066cleaning build cache\u2069\u2069"
RAW = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x200B)]
ESCAPED = "\\u2067\\u2066; rm -rf /workspace/project \\u2069"
WARNING = "invisible, direction-changing or look-alike characters"


class _Hook(BaseHTTPRequestHandler):
    got: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).got.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any], Call]]:
    """A gateway with a webhook and one held call whose argument is the spoof."""
    _Hook.got = []
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    home = make_home(tmp_path_factory.mktemp("display"), webhook=f"http://127.0.0.1:{hook.server_address[1]}/")
    srv = serve(home)
    try:
        call = Call(srv, srv.agent("mallory"), "agent.approval", {"approval": SPOOF, "wait": 7})
        call.start()
        a = wait_pending(home)
        yield srv, a, call
        quick_json("approvals", "reject", a["approval"], home=home)
        call.result()
    finally:
        srv.stop()
        hook.shutdown()


def _no_raw(text: str) -> None:
    found = sorted({f"U+{ord(c):04X}" for c in text if c in RAW})
    assert not found, f"raw direction/invisible characters reach the owner: {found}"


def test_dashboard_pages_show_the_escapes_and_a_warning(held: tuple[Server, dict[str, Any], Call]) -> None:
    srv, a, _ = held
    d = Dash(srv)
    assert d.login(d.token(srv.home)).status_code == 303
    for path in ("/approvals", f"/approvals/{a['approval']}", "/audit?kind=approval.requested"):
        page = d.c.get(path).text
        deadline = time.monotonic() + 30
        while "no records" in page and time.monotonic() < deadline:   # the audit index trails the log
            time.sleep(0.2)
            page = d.c.get(path).text
        _no_raw(page)
        assert "\\u2067" in page and "rm -rf /workspace/project" in page, path
    for path in ("/approvals", f"/approvals/{a['approval']}"):
        assert WARNING in d.c.get(path).text, path
    # The live-activity stream carries an escaped rendering beside the raw data.
    tok = d.token(srv.home)
    with d.c.stream("GET", "/api/events", headers={"authorization": f"Bearer {tok}"}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"approval.requested"' in line:
                ev = json.loads(line[6:])
                break
    shown = ev["display"]
    _no_raw(json.dumps(shown, ensure_ascii=False))
    assert shown["suspicious"] is True and "\\u2067" in shown["detail"]


def test_cli_shows_the_escapes_and_a_warning(held: tuple[Server, dict[str, Any], Call]) -> None:
    srv, a, _ = held
    show = run_cli("approvals", "show", a["approval"], home=srv.home).stdout
    _no_raw(show)
    assert ESCAPED in show and "WARNING" in show and WARNING in show
    listing = run_cli("approvals", "list", home=srv.home).stdout
    _no_raw(listing)
    assert "\\u2067" in listing and "WARNING" in listing
    audit = run_cli("audit", "query", "--kind", "approval.requested", home=srv.home).stdout
    _no_raw(audit)
    assert "\\u2067" in audit


def test_watch_shows_the_escapes(held: tuple[Server, dict[str, Any], Call]) -> None:
    srv, _, _ = held
    proc = subprocess.Popen([*STOCKADE, "watch", "--history", "50", "--home", str(srv.home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if "approval.requested" in line:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    assert "approval.requested" in line
    _no_raw(line)
    assert "\\u2067" in line


def test_webhook_text_is_escaped(held: tuple[Server, dict[str, Any], Call]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(e.get("kind") == "approval.requested" for e in _Hook.got):
        time.sleep(0.1)
    ev = next(e for e in _Hook.got if e.get("kind") == "approval.requested")
    assert ev["data"]["args"]["approval"] == SPOOF          # the raw JSON stays exact for machines
    _no_raw(ev["text"])                                     # what a person reads is escaped
    assert "\\u2067" in ev["text"] and ev["suspicious"] is True and WARNING in ev["text"]
