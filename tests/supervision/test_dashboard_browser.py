"""The dashboard in Debian's headless Chromium driven by Playwright: log in, watch a notify event
arrive live, approve a held call by clicking, screenshot every page, and prove that no page load
talks to anything but this machine."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from tests.conftest import ROOT, Server, need, quick_json

from .helpers import Call, make_home, serve, steady_navigation, wait_pending

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("supervision-browser")]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
XSS = '<img src=x onerror=alert(1)>"<script>alert(2)</script>'


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[tuple[object, list[str], list[str]]]:
    need(os.path.exists(CHROMIUM), "needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    dialogs: list[str] = []
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=ARGS,
                                                   headless=True, ignore_https_errors=True,
                                                   viewport={"width": 1280, "height": 900})
        try:
            page = steady_navigation(ctx.pages[0] if ctx.pages else ctx.new_page())
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
            yield page, requests, dialogs
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def _local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname in ("127.0.0.1", "localhost", "::1")


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_dashboard_login_live_events_click_approve(tmp_path: Path, browser_page: tuple) -> None:
    page, requests, dialogs = browser_page
    home = make_home(tmp_path, hold=90)
    server: Server = serve(home)
    try:
        key = server.agent("alice")
        base = f"https://127.0.0.1:{server.ports['dashboard']}"
        token = quick_json("admin", "token", home=home)["token"]

        page.goto(base + "/")                          # no session: sent to the login page
        assert page.url.endswith("/login")
        _shot(page, "login")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        if not page.url.rstrip("/").endswith(str(server.ports["dashboard"])):
            _shot(page, "login-failed")
            raise AssertionError(f"login did not land on the overview: {page.url} {page.content()[:2000]}")
        assert page.locator("h1").inner_text() == "Overview"
        _shot(page, "overview")

        # Live activity: a notify-tier call appears without reloading.
        page.goto(base + "/activity")
        page.wait_for_selector("#conn:text('live')", timeout=15000)
        assert "result" in server.invoke(key, "system.info")
        row = page.wait_for_selector("tr[data-kind='call.notify']", timeout=15000)
        assert "system.info" in row.inner_text() and "alice" in row.inner_text()
        _shot(page, "activity")

        # A held call, approved by clicking; the agent gets the real result.
        call = Call(server, key, "system.time")
        call.start()
        a = wait_pending(home)
        # and one with a hostile argument, shown as text
        evil = Call(server, server.agent("mallory"), "agent.approval", {"approval": XSS, "wait": 7})
        evil.start()
        wait_pending(home, exclude={a["approval"]})
        page.goto(base + "/approvals")
        card = page.locator(f"article[data-id='{a['approval']}']")
        assert "system.time" in card.inner_text()
        assert json.dumps(XSS) in page.locator("body").inner_text()  # the payload is visible text...
        assert page.locator("img[src=x]").count() == 0             # ...never markup
        _shot(page, "approvals")
        page.click(f"#approve-{a['approval']}")
        page.wait_for_url(base + f"/approvals?done={a['approval']}")
        resp = call.result()
        assert "unix" in resp["result"], resp
        shown = quick_json("approvals", "show", a["approval"], home=home)
        assert shown["status"] == "executed" and shown["decided_by"]["via"] == "dashboard"
        assert len(shown["decided_by"]["session"]) == 16   # a digest of the session id, never the id
        page.goto(base + f"/approvals/{a['approval']}")
        assert "executed" in page.locator("body").inner_text()

        page.goto(base + "/agents")
        assert "alice" in page.locator("body").inner_text()
        _shot(page, "agents")

        page.goto(base + "/audit")
        page.click("#verify")
        page.wait_for_url(base + "/audit")
        body = page.locator("body").inner_text()
        assert "intact" in body and "approval.decided" in body
        _shot(page, "audit")
        for name in ("secrets", "packs"):
            page.goto(base + f"/{name}")
            assert page.locator("h1").inner_text() == name.capitalize()
            _shot(page, name)

        assert dialogs == [], f"script ran from agent-supplied text: {dialogs}"
        foreign = [u for u in requests if not _local(u)]
        assert foreign == [], f"pages made non-local requests: {foreign}"
        assert any("/static/app.js" in u for u in requests)
        # The hostile call is still pending (its own approval); reject it so the agent is answered.
        bad = wait_pending(home)
        quick_json("approvals", "reject", bad["approval"], "--reason", "no", home=home)
        assert evil.result()["error"]["data"]["type"] == "ApprovalRejected"
    finally:
        server.stop()
