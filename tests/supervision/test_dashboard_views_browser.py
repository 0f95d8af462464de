"""Every dashboard page readable at desktop (1280 px) and phone (390 px) width in Debian's Chromium:
no horizontal overflow, a screenshot of each; Live activity filters; revoking a key asks first;
a decision is confirmed on the page the owner lands on (issue 18, "Raw" and "Noisy")."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import Server, need, quick_json

from .helpers import Call, make_home, serve, steady_navigation, wait_pending
from .test_dashboard_browser import ARGS, ARTIFACTS, CHROMIUM

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("supervision-browser")]

WIDTHS = (1280, 390)
LONG = "x" * 60 + "/a-very-long-unbroken-path-segment-that-would-push-the-page-wider-than-a-phone" * 2


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    need(os.path.exists(CHROMIUM), "needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=ARGS,
                                                   headless=True, ignore_https_errors=True,
                                                   viewport={"width": 1280, "height": 900})
        try:
            pg = steady_navigation(ctx.pages[0] if ctx.pages else ctx.new_page())
            pg.on("dialog", lambda dlg: dlg.dismiss())
            yield pg
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def _overflow(page: object) -> int:
    """How many CSS pixels the page is wider than the window (0: none)."""
    return int(page.evaluate(  # type: ignore[attr-defined]
        "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth) - window.innerWidth"))


def _login(page: object, base: str, home: Path) -> None:
    page.goto(base + "/login")  # type: ignore[attr-defined]
    page.fill("#token", quick_json("admin", "token", home=home)["token"])  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(base + "/")  # type: ignore[attr-defined]


def test_every_page_fits_desktop_and_phone_width(tmp_path: Path, page: object) -> None:
    home = make_home(tmp_path, hold=90)
    server: Server = serve(home)
    try:
        key = server.agent("alice")
        server.agent("victim")
        assert "result" in server.invoke(key, "system.info")
        held = Call(server, key, "agent.approval", {"approval": LONG[:64], "wait": 7})
        held.start()
        a = wait_pending(home)
        base = f"https://127.0.0.1:{server.ports['dashboard']}"
        _login(page, base, home)
        paths = {"overview": "/", "approvals": "/approvals", "approval": f"/approvals/{a['approval']}",
                 "activity": "/activity", "agents": "/agents", "revoke-confirm": "/agents/victim/revoke",
                 "audit": "/audit", "secrets": "/secrets", "packs": "/packs", "error": "/no-such-page"}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
            for name, path in paths.items():
                page.goto(base + path)  # type: ignore[attr-defined]
                page.wait_for_load_state()  # type: ignore[attr-defined]
                page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)  # type: ignore[attr-defined]
                assert _overflow(page) <= 0, f"{path} is {_overflow(page)} px wider than {width} px"
        # Overview layers read as words, not JSON.
        page.goto(base + "/")  # type: ignore[attr-defined]
        layers = page.locator("table").first.inner_text()  # type: ignore[attr-defined]
        assert "{" not in layers and '":' not in layers, layers
        # No vault was created: the badge says so instead of a red "sealed".
        assert page.locator(".tile .badge").nth(1).inner_text() == "not set up"  # type: ignore[attr-defined]
        quick_json("approvals", "reject", a["approval"], home=home)
        held.result()
    finally:
        server.stop()


def test_activity_filters_revoke_confirmation_and_decision_notice(tmp_path: Path, page: object) -> None:
    home = make_home(tmp_path, hold=90)
    server: Server = serve(home)
    try:
        alice, bob = server.agent("alice"), server.agent("bob")
        server.agent("victim")
        base = f"https://127.0.0.1:{server.ports['dashboard']}"
        _login(page, base, home)
        page.goto(base + "/activity")  # type: ignore[attr-defined]
        page.wait_for_selector("#conn:text('live')", timeout=15000)  # type: ignore[attr-defined]
        assert "result" in server.invoke(alice, "system.info")
        assert "result" in server.invoke(bob, "agent.whoami")
        page.wait_for_selector("tr[data-agent='bob']", timeout=15000)  # type: ignore[attr-defined]
        visible = "#events tbody tr:not([hidden])"
        page.fill("#ev-filters input[name=agent]", "bob")  # type: ignore[attr-defined]
        rows = page.locator(visible)  # type: ignore[attr-defined]
        assert rows.count() >= 1 and all("bob" in rows.nth(i).inner_text() for i in range(rows.count()))
        page.fill("#ev-filters input[name=agent]", "")  # type: ignore[attr-defined]
        page.select_option("#ev-filters select[name=tier]", "notify")  # type: ignore[attr-defined]
        rows = page.locator(visible)  # type: ignore[attr-defined]
        assert rows.count() >= 2 and all("notify" in rows.nth(i).inner_text() for i in range(rows.count()))
        page.select_option("#ev-filters select[name=tier]", "")  # type: ignore[attr-defined]
        page.fill("#ev-filters input[name=kind]", "approval.")  # type: ignore[attr-defined]
        assert page.locator(visible).count() == 0  # type: ignore[attr-defined]

        # Audit page filters by tier and event type on the server.
        # (the audit index trails the log by design, on its own thread: reload until the call shows)
        deadline = time.monotonic() + 20
        while True:
            page.goto(base + "/audit?tier=notify")  # type: ignore[attr-defined]
            body = page.locator("table").last.inner_text()  # type: ignore[attr-defined]
            if "system.info" in body or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert "system.info" in body and "agent.created" not in body
        assert page.locator("select[name=tier]").input_value() == "notify"  # type: ignore[attr-defined]

        # Revoke key: a confirmation page first; Cancel changes nothing, the confirm button revokes.
        page.goto(base + "/agents")  # type: ignore[attr-defined]
        page.click("a[href='/agents/victim/revoke']")  # type: ignore[attr-defined]
        page.wait_for_url(base + "/agents/victim/revoke")  # type: ignore[attr-defined]
        assert "cannot be undone" in page.locator("main").inner_text()  # type: ignore[attr-defined]
        assert {x["name"]: x["status"] for x in quick_json("agents", home=home)["agents"]}["victim"] == "active"
        page.click("#revoke-confirm")  # type: ignore[attr-defined]
        page.wait_for_url(base + "/agents")  # type: ignore[attr-defined]
        assert {x["name"]: x["status"] for x in quick_json("agents", home=home)["agents"]}["victim"] == "revoked"

        # Approving is confirmed on the page the owner lands on.
        call = Call(server, alice, "system.time")
        call.start()
        a = wait_pending(home)
        page.goto(base + "/approvals")  # type: ignore[attr-defined]
        page.click(f"#approve-{a['approval']}")  # type: ignore[attr-defined]
        page.wait_for_url(base + f"/approvals?done={a['approval']}")  # type: ignore[attr-defined]
        note = page.locator("#notice").inner_text()  # type: ignore[attr-defined]
        assert note.startswith("Approved") and a["approval"] in note and "system.time" in note
        assert "unix" in call.result()["result"]
    finally:
        server.stop()
