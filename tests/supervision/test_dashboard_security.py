"""Attacks on the dashboard over real HTTPS: no session, forged/replayed CSRF, other origins,
DNS rebinding, token rotation, unknown approvals, hostile arguments rendered inert."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from tests.conftest import Server, quick_json

from .helpers import Call, Dash, make_home, serve, wait_pending

pytestmark = pytest.mark.xdist_group("supervision-dash")

XSS = '"><img src=x onerror=alert(1)><script>alert(2)</script>'


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = make_home(tmp_path_factory.mktemp("dash"), hold=0.5)
    s = serve(home)
    try:
        yield s
    finally:
        s.stop()


def logged_in(srv: Server, token: str | None = None) -> Dash:
    """A logged-in client (without `token`, a fresh admin token is issued: older sessions end)."""
    d = Dash(srv)
    r = d.login(token or d.token(srv.home))
    assert r.status_code == 303, r.text
    return d


def test_tls_and_security_headers(srv: Server) -> None:
    d = Dash(srv)   # verifies the self-signed certificate for 127.0.0.1
    r = d.c.get("/login")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    with pytest.raises(httpx.HTTPError):   # plain HTTP is not served
        httpx.get(f"http://127.0.0.1:{d.port}/login", timeout=5)


def test_no_session_means_redirect_or_401(srv: Server) -> None:
    d = Dash(srv)
    for path in ("/", "/approvals", "/activity", "/agents", "/audit", "/secrets", "/packs", "/approvals/apr_x"):
        r = d.c.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in ("/api/overview", "/api/approvals", "/api/agents", "/api/audit", "/api/events", "/api/secrets",
                 "/api/packs", "/api/grants"):
        assert d.c.get(path).status_code == 401, path
    assert d.c.get("/api/overview", headers={"authorization": "Bearer sta_wrong"}).status_code == 401
    assert d.c.post("/approvals/apr_x/approve", data={"csrf": "x"}).status_code == 401
    assert d.c.post("/api/approvals/apr_x/approve", json={}).status_code == 401
    # A made-up session cookie is no session.
    d.c.cookies.set("__Host-stockade", "forged")
    assert d.c.get("/").status_code == 303


def test_login_cookie_flags_and_wrong_token(srv: Server) -> None:
    d = Dash(srv)
    page = d.c.get("/login")
    lc = re.search(r'name="login_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    bad = d.c.post("/login", data={"token": "sta_" + "A" * 43, "login_csrf": lc})
    assert bad.status_code == 401 and "__Host-stockade=" not in bad.headers.get("set-cookie", "")
    # A login without the login-form cookie pairing is refused (login CSRF).
    fresh = Dash(srv)
    r = fresh.c.post("/login", data={"token": d.token(srv.home), "login_csrf": "guess"})
    assert r.status_code == 400
    tok = d.token(srv.home)
    r = d.login(tok)
    assert r.status_code == 303
    cookie = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("__Host-stockade=")][0]
    low = cookie.lower()
    assert "httponly" in low and "secure" in low and "samesite=strict" in low and "path=/" in low
    assert d.c.get("/").status_code == 200


def test_csrf_forged_missing_replayed_and_cross_origin(srv: Server) -> None:
    key = srv.agent("alice")
    r = srv.invoke(key, "system.time")
    aid = r["error"]["data"]["approval"]
    tok = quick_json("admin", "token", home=srv.home)["token"]
    d = logged_in(srv, tok)
    csrf = d.csrf()
    url = f"/approvals/{aid}/reject"
    assert d.c.post(url, data={}).status_code == 403                                  # missing
    assert d.c.post(url, data={"csrf": "forged" + csrf[6:]}).status_code == 403       # forged
    other = logged_in(srv, tok)
    # Another session's token is not this session's (replay across sessions).
    assert d.c.post(url, data={"csrf": other.csrf()}).status_code == 403
    # Right token, but the request comes from another origin (a page elsewhere, even on loopback).
    for origin in ("https://evil.example", f"https://127.0.0.1:{d.port + 1}", "null"):
        r = d.c.post(url, data={"csrf": csrf}, headers={"origin": origin})
        assert r.status_code == 403, origin
    r = d.c.post(url, data={"csrf": csrf}, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    # DNS rebinding: a page served under another name.
    assert d.c.get("/", headers={"host": "evil.example"}).status_code == 421
    # Bearer API from another origin is refused too.
    r = Dash(srv).c.post(f"/api/approvals/{aid}/reject", json={},
                 headers={"authorization": f"Bearer {tok}", "origin": "https://evil.example"})
    assert r.status_code == 403
    assert quick_json("approvals", "show", aid, home=srv.home)["status"] == "pending"   # nothing changed
    # The real thing works: same origin, this session's token.
    r = d.c.post(url, data={"csrf": csrf, "reason": "no"}, headers={"origin": d.base})
    assert r.status_code == 303
    assert quick_json("approvals", "show", aid, home=srv.home)["status"] == "rejected"


def test_token_rotation_and_logout_end_sessions(srv: Server) -> None:
    d = logged_in(srv)
    csrf = d.csrf()
    assert d.c.post("/logout", data={"csrf": csrf}).status_code == 303
    assert d.c.get("/").status_code == 303
    d = logged_in(srv)
    assert d.c.get("/").status_code == 200
    quick_json("admin", "token", home=srv.home)          # a fresh token invalidates old sessions
    assert d.c.get("/").status_code == 303
    assert d.c.get("/api/overview").status_code == 401


def test_unknown_and_expired_ids_are_clear_errors(srv: Server) -> None:
    d = logged_in(srv)
    tok = d.token(srv.home)
    h = {"authorization": f"Bearer {tok}"}
    r = d.c.post("/api/approvals/apr_000000000000/approve", json={}, headers=h)
    assert r.status_code == 404 and r.json()["error"]["type"] == "ApprovalNotFound"
    assert d.c.get("/api/approvals/apr_000000000000", headers=h).status_code == 404
    r = d.c.post("/api/grants", json={"agent": "alice", "capability": "system.time", "minutes": -1}, headers=h)
    assert r.status_code == 400
    assert d.c.get("/api/audit?limit=abc", headers=h).status_code == 400


def test_xss_payload_in_arguments_is_rendered_as_text(srv: Server) -> None:
    key = srv.agent("mallory")
    call = Call(srv, key, "agent.approval", {"approval": XSS[:64], "wait": 7})
    call.start()
    a = wait_pending(srv.home, exclude={x["approval"] for x in quick_json("approvals", "list", "--all",
                                                                       home=srv.home)["approvals"]
                                        if x["capability"] != "agent.approval"})
    d = logged_in(srv)
    for path in ("/approvals", f"/approvals/{a['approval']}"):
        page = d.c.get(path).text
        assert "<img src=x" not in page and "<script>alert" not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
    call.result()


def test_rest_grant_approve_revoke_and_events(srv: Server) -> None:
    """Scripting the dashboard with the bearer token: approve + grant, revoke an agent, read events."""
    d = Dash(srv)
    tok = d.token(srv.home)
    h = {"authorization": f"Bearer {tok}"}
    key = srv.agent("scripted")
    aid = srv.invoke(key, "system.time")["error"]["data"]["approval"]
    r = d.c.post(f"/api/approvals/{aid}/approve", json={"grant_minutes": 5}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["changed"] is True and body["grant"]["capability"] == "system.time"
    assert "result" in srv.invoke(key, "system.time")          # covered by the grant now
    st = srv.rpc(key, "approvals.status", {"approval": aid, "wait": 20}).json()["result"]
    assert st["status"] == "executed"
    grants = d.c.get("/api/grants", headers=h).json()["grants"]
    assert any(g["agent"] == "scripted" for g in grants)

    victim = srv.agent("victim")
    assert "result" in srv.invoke(victim, "agent.whoami")
    assert d.c.post("/api/agents/victim/revoke", json={}, headers=h).json()["status"] == "revoked"
    assert srv.invoke(victim, "agent.whoami")["error"]["data"]["type"] == "Unauthenticated"

    # SSE: history first; Last-Event-ID resumes after a given id.
    with d.c.stream("GET", "/api/events", headers=h) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        ids = []
        for line in resp.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
            if line.startswith("data: ") and '"agent.revoked"' in line:
                break
    assert ids == sorted(ids) and len(ids) >= 2
    with d.c.stream("GET", "/api/events", headers={**h, "last-event-id": str(ids[-2])}) as resp:
        first = next(int(line[4:]) for line in resp.iter_lines() if line.startswith("id: "))
    assert first == ids[-1]
