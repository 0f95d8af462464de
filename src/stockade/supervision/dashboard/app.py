"""The dashboard ASGI app (127.0.0.1:7800, HTTPS).

Authentication: the admin token (only its hash is stored) is exchanged at `/login` for a session
cookie `__Host-stockade` (HttpOnly, Secure, SameSite=Strict, Path=/). `/api/*` also accepts
`Authorization: Bearer <admin token>`. Every state-changing request made with a session must
carry the session's CSRF token (form field `csrf` or header `X-CSRF-Token`) and, when the browser
sends them, an `Origin` equal to this dashboard's own origin and `Sec-Fetch-Site` same-origin.
Host/Origin are also checked before any route by GuardMiddleware (DNS-rebinding protection).
Pages load nothing from anywhere else (strict Content-Security-Policy; scripts and styles are
served from /static).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from stockade.core import agents as agents_mod
from stockade.core.errors import StockadeError, err
from stockade.edge.bounded import parse_json
from stockade.edge.security import GuardMiddleware
from stockade.supervision import audit_view, tokens
from stockade.supervision.dashboard import views
from stockade.supervision.shown import event_display

COOKIE = "__Host-stockade"
LOGIN_COOKIE = "__Host-stockade-login"
STATIC = Path(__file__).parent / "static"
MAX_FORM = 64 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",   # (no-referrer makes Chromium send `Origin: null` on forms)
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


@dataclass
class Session:
    csrf: str
    expires: float
    token_hash: bytes


class Sessions:
    """In memory: a restart logs the owner out, which is the safe direction."""

    def __init__(self, minutes: int):
        self.ttl = minutes * 60
        self._s: dict[str, Session] = {}

    def create(self, token_hash: bytes) -> str:
        sid = secrets.token_urlsafe(32)
        self._s[sid] = Session(secrets.token_urlsafe(32), time.time() + self.ttl, token_hash)
        return sid

    def get(self, sid: str | None, current_hash: bytes | None) -> Session | None:
        if not sid or len(sid) > 100:
            return None
        s = self._s.get(sid)
        if s is None:
            return None
        if time.time() >= s.expires or current_hash is None or not hmac.compare_digest(s.token_hash, current_hash):
            self._s.pop(sid, None)   # expired, or the admin token was rotated since
            return None
        return s

    def drop(self, sid: str | None) -> None:
        if sid:
            self._s.pop(sid, None)


class SecurityHeaders:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope.get("path", "").startswith("/static/")

        async def wrapped(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for k, v in SECURITY_HEADERS.items():
                    if k.encode() not in names:
                        headers.append((k.encode(), v.encode()))
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"private, max-age=300" if static else b"no-store"))
                msg = {**msg, "headers": headers}
            await send(msg)

        return await self.app(scope, receive, wrapped)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _same_origin(request: Request) -> bool:
    """For state changes: the browser's Origin (if sent) must be exactly this dashboard."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"https://{request.headers.get('host', '')}":
        return False
    site = request.headers.get("sec-fetch-site")
    return site in (None, "same-origin", "none")


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise err("InvalidInput", "form too large")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            data = parse_json(body or b"{}")   # the edge's bounded parse (depth, sizes, finite numbers)
        except StockadeError as e:
            raise err("InvalidInput", "body is not valid JSON" if e.type == "ParseError" else e.message) from None
        if not isinstance(data, dict):
            raise err("InvalidInput", "body must be a JSON object")
        return data
    q = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=50)
    return {k: v[0] for k, v in q.items()}


class Dashboard:
    def __init__(self, gw: Any):
        self.gw = gw
        self.db = gw.pipeline.db
        self.sessions = Sessions(gw.config.dashboard.session_minutes)
        self.last_verify: dict[str, Any] | None = None
        self._fails: list[float] = []

    # -- auth helpers --------------------------------------------------------------------------
    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), tokens.current_hash(self.db))

    def api_auth(self, request: Request) -> tuple[bool, Session | None]:
        """(authenticated, session-or-None-for-bearer)."""
        tok = _bearer(request)
        if tok is not None:
            return tokens.check(self.db, tok) is not None, None
        s = self.session(request)
        return s is not None, s

    @staticmethod
    def csrf_ok(s: Session, form: dict[str, Any], request: Request) -> bool:
        sent = request.headers.get("x-csrf-token") or form.get("csrf")
        return isinstance(sent, str) and hmac.compare_digest(sent.encode(), s.csrf.encode()) and _same_origin(request)

    def svc(self) -> Any:
        svc = self.gw.approvals
        if svc is None:
            raise err("Internal", "approvals are not running")
        return svc

    # -- data (shared by pages and /api) ---------------------------------------------------------
    def overview_data(self) -> dict[str, Any]:
        p = self.gw.pipeline
        layers = dict(p.health)
        statuses = {v.get("status", "ok") for v in layers.values() if isinstance(v, dict)}
        status = "critical" if "critical" in statuses else "degraded" if "degraded" in statuses else "ok"
        vault = layers.get("vault")
        vstate = "unknown"
        if isinstance(vault, dict):
            vstate = ("sealed" if vault.get("sealed") else "unsealed" if "sealed" in vault
                      else vault.get("status", "unknown"))
        ags = agents_mod.list_all(self.db)
        from stockade.approvals import store

        return {"status": status, "layers": layers, "vault": vstate, "audit": self.audit_status(),
                "pending_approvals": store.count_pending(self.db), "agents_active": sum(a.active for a in ags),
                "agents": len(ags), "started": p.started, "ports": self.gw.ports}

    def agents_data(self) -> list[dict[str, Any]]:
        p = self.gw.pipeline
        out = []
        for a in agents_mod.list_all(self.db):
            tiers: dict[str, str] = {}
            for d in p.registry.all():
                try:
                    tiers[d.name] = p.policy.peek(a.name, d.name, {}).tier
                except Exception:
                    tiers[d.name] = "approval_required"
            pending = self.db.execute("SELECT count(*) FROM approvals WHERE agent=? AND status='pending'",
                                      (a.name,)).fetchone()[0]
            sandbox = None
            prof = getattr(p.policy, "sandbox_profile", None)
            if callable(prof):
                try:
                    sandbox = prof(a.name)
                    sandbox = sandbox if isinstance(sandbox, dict) else getattr(sandbox, "__dict__", str(sandbox))
                except Exception:
                    sandbox = None
            out.append({"name": a.name, "status": "active" if a.active else "revoked", "created": a.created_at,
                        "revoked": a.revoked_at, "pending": pending, "tiers": tiers, "sandbox": sandbox})
        return out

    # audit: optional part (the dashboard works before/without it)
    def audit_status(self) -> dict[str, Any]:
        if not audit_view.available(self.gw):
            return {"status": "unavailable"}
        if self.last_verify is None:
            return {"status": "not verified yet"}
        return {"status": self.last_verify.get("status", "unknown"), "at": self.last_verify.get("at")}

    async def audit_query(self, filters: dict[str, Any]) -> dict[str, Any]:
        if not audit_view.available(self.gw):
            return {"available": False, "records": []}
        return {"available": True, "records": await audit_view.query(self.gw, filters), "filters": filters,
                "verify": self.last_verify}

    async def audit_verify(self) -> dict[str, Any]:
        if not audit_view.available(self.gw):
            raise err("Internal", "audit not available on this gateway")
        self.last_verify = {**await audit_view.verify(self.gw), "at": time.time()}
        return self.last_verify

    def secrets_data(self) -> dict[str, Any]:
        v = self.gw.vault
        f = v.file if v is not None else None
        if v is None or f is None:
            return {"available": False, "secrets": []}
        rows = [r.public() for r in f.rows()] if f.exists() else []
        return {"available": True, "sealed": bool(getattr(v, "sealed", True)), "secrets": rows}

    def packs_data(self) -> dict[str, Any]:
        try:
            from stockade.packs import store as packs_store

            rows = packs_store.installed(self.db)
        except Exception:   # the packs part is absent or has not created its tables
            return {"available": False, "packs": []}
        return {"available": True, "packs": [{"name": p.name, "version": p.version, "publisher": p.publisher,
                                              "key_id": p.key_id, "manifest_sha256": p.manifest_sha256,
                                              "installed_at": p.installed_at} for p in rows]}

    async def revoke_agent(self, name: str) -> dict[str, Any]:
        a = agents_mod.revoke(self.db, name)
        await self.gw.pipeline.record_event("agent.revoked", agent=name, by="dashboard")
        self.gw.bus.publish("agent.revoked", {"agent": name, "by": "dashboard"}, "warning")
        return {"name": a.name, "status": "active" if a.active else "revoked"}


def _filters(q: Any) -> dict[str, Any]:
    f: dict[str, Any] = {}
    for k in ("agent", "capability", "kind", "since", "until"):
        v = q.get(k)
        if v:
            if len(v) > 200:
                raise err("InvalidInput", f"{k} too long")
            f[k] = v
    lim = q.get("limit") or "100"
    if not lim.isdigit() or not 1 <= int(lim) <= 1000:
        raise err("InvalidInput", "limit must be 1..1000")
    f["limit"] = int(lim)
    return f


def _json_error(e: StockadeError) -> JSONResponse:
    status = {"Unauthenticated": 401, "Forbidden": 403, "ApprovalNotFound": 404, "InvalidInput": 400,
              "ApprovalExpired": 409}.get(e.type, 400 if e.type != "Internal" else 500)
    return JSONResponse({"error": e.to_dict()}, status_code=status)


def build_app(gw: Any) -> Any:
    d = Dashboard(gw)
    gw.dashboard = d
    static_files = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.suffix in (".js", ".css")}

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status)

    def set_cookie(resp: Response, name: str, value: str, max_age: int) -> None:
        resp.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")

    # -- login / logout ------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        lc = secrets.token_urlsafe(24)
        resp = html(views.login(lc))
        set_cookie(resp, LOGIN_COOKIE, lc, 600)
        return resp

    async def login_post(request: Request) -> Response:
        if not _same_origin(request):
            return html(views.error_page(403, "cross-origin login refused"), 403)
        try:
            form = await _form(request)
        except StockadeError as e:
            return html(views.error_page(400, e.message), 400)
        lc = request.cookies.get(LOGIN_COOKIE) or ""
        sent = form.get("login_csrf") or ""
        now = time.time()
        d._fails = [t for t in d._fails if now - t < 60]
        if len(d._fails) >= 20:
            return html(views.error_page(429, "too many failed logins; wait a minute"), 429)
        if not lc or not isinstance(sent, str) or not hmac.compare_digest(lc.encode(), sent.encode()):
            return html(views.login(secrets.token_urlsafe(24), "Your login form expired; try again."), 400)
        th = tokens.check(d.db, form.get("token"))
        if th is None:
            d._fails.append(now)
            await asyncio.sleep(0.25)
            lc2 = secrets.token_urlsafe(24)
            resp = html(views.login(lc2, "That is not the current admin token."), 401)
            set_cookie(resp, LOGIN_COOKIE, lc2, 600)
            return resp
        sid = d.sessions.create(th)
        await gw.pipeline.record_event("dashboard.login", by="dashboard")
        resp = RedirectResponse("/", status_code=303)
        set_cookie(resp, COOKIE, sid, d.sessions.ttl)
        resp.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return resp

    async def logout(request: Request) -> Response:
        s = d.session(request)
        if s is None:
            return RedirectResponse("/login", status_code=303)
        form = await _form(request)
        if not d.csrf_ok(s, form, request):
            return html(views.error_page(403, "CSRF check failed"), 403)
        d.sessions.drop(request.cookies.get(COOKIE))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return resp

    # -- pages ------------------------------------------------------------------------------------
    def page(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            s = d.session(request)
            if s is None:
                return RedirectResponse("/login", status_code=303)
            try:
                return await fn(request, s)
            except StockadeError as e:
                return html(views.error_page(404 if e.type == "ApprovalNotFound" else 400, e.message, s.csrf),
                            404 if e.type == "ApprovalNotFound" else 400)
        return endpoint

    def action(fn: Any) -> Any:
        """A form POST from a page: session + CSRF + same origin, then redirect back."""
        async def endpoint(request: Request) -> Response:
            s = d.session(request)
            if s is None:
                return html(views.error_page(401, "log in first"), 401)
            try:
                form = await _form(request)
            except StockadeError as e:
                return html(views.error_page(400, e.message, s.csrf), 400)
            if not d.csrf_ok(s, form, request):
                return html(views.error_page(403, "CSRF check failed: reload the page and try again"), 403)
            try:
                return await fn(request, s, form)
            except StockadeError as e:
                code = 404 if e.type == "ApprovalNotFound" else 409 if e.type == "ApprovalExpired" else 400
                return html(views.error_page(code, f"{e.type}: {e.message}", s.csrf), code)
        return endpoint

    @page
    async def overview(request: Request, s: Session) -> Response:
        return html(views.overview(d.overview_data(), s.csrf))

    @page
    async def approvals(request: Request, s: Session) -> Response:
        return html(views.approvals(d.svc().list(None, 200), d.svc().grants(), s.csrf))

    @page
    async def approval(request: Request, s: Session) -> Response:
        return html(views.approval_page(d.svc().show(request.path_params["id"]), s.csrf))

    @page
    async def activity(request: Request, s: Session) -> Response:
        return html(views.activity(s.csrf))

    @page
    async def agents_page(request: Request, s: Session) -> Response:
        return html(views.agents(d.agents_data(), s.csrf))

    @page
    async def audit_page(request: Request, s: Session) -> Response:
        data = await d.audit_query(_filters(request.query_params))
        return html(views.audit(data, s.csrf))

    @page
    async def secrets_page(request: Request, s: Session) -> Response:
        return html(views.secrets(d.secrets_data(), s.csrf))

    @page
    async def packs_page(request: Request, s: Session) -> Response:
        return html(views.packs(d.packs_data(), s.csrf))

    def _minutes(form: dict[str, Any]) -> float | None:
        v = form.get("grant_minutes")
        if v in (None, ""):
            return None
        try:
            return float(v)
        except (TypeError, ValueError):
            raise err("InvalidInput", "grant_minutes must be a number") from None

    @action
    async def approve(request: Request, s: Session, form: dict[str, Any]) -> Response:
        aid = request.path_params["id"]
        minutes = _minutes(form)
        out = await d.svc().decide(aid, "approve", by="dashboard")   # an expired one raises: no grant either
        if minutes is not None and out["changed"]:
            await d.svc().grant(out["agent"], out["capability"], minutes, by="dashboard", approval=aid)
        return RedirectResponse("/approvals", status_code=303)

    @action
    async def reject(request: Request, s: Session, form: dict[str, Any]) -> Response:
        await d.svc().decide(request.path_params["id"], "reject", by="dashboard", reason=form.get("reason") or None)
        return RedirectResponse("/approvals", status_code=303)

    @action
    async def revoke_grant(request: Request, s: Session, form: dict[str, Any]) -> Response:
        await d.svc().revoke_grant(request.path_params["id"], by="dashboard")
        return RedirectResponse("/approvals", status_code=303)

    @action
    async def revoke_agent(request: Request, s: Session, form: dict[str, Any]) -> Response:
        await d.revoke_agent(request.path_params["name"])
        return RedirectResponse("/agents", status_code=303)

    @action
    async def verify(request: Request, s: Session, form: dict[str, Any]) -> Response:
        await d.audit_verify()
        return RedirectResponse("/audit", status_code=303)

    # -- /api -------------------------------------------------------------------------------------
    def api(fn: Any, *, write: bool = False) -> Any:
        async def endpoint(request: Request) -> Response:
            ok, s = d.api_auth(request)
            if not ok:
                return JSONResponse({"error": {"type": "Unauthenticated", "message": "admin token or session required",
                                               "recovery": []}}, status_code=401)
            try:
                body: dict[str, Any] = {}
                if write:
                    body = await _form(request)
                    if s is not None and not d.csrf_ok(s, body, request):
                        return JSONResponse({"error": {"type": "Forbidden", "message": "CSRF check failed",
                                                       "recovery": []}}, status_code=403)
                    if s is None and not _same_origin(request):
                        return JSONResponse({"error": {"type": "Forbidden", "message": "cross-origin refused",
                                                       "recovery": []}}, status_code=403)
                out = await fn(request, body)
            except StockadeError as e:
                return _json_error(e)
            return out if isinstance(out, Response) else JSONResponse(out)
        return endpoint

    async def api_overview(request: Request, body: dict[str, Any]) -> Any:
        return d.overview_data()

    async def api_approvals(request: Request, body: dict[str, Any]) -> Any:
        status = request.query_params.get("status") or None
        return {"approvals": d.svc().list(status, 200), "grants": d.svc().grants()}

    async def api_approval(request: Request, body: dict[str, Any]) -> Any:
        return d.svc().show(request.path_params["id"])

    async def api_approve(request: Request, body: dict[str, Any]) -> Any:
        aid = request.path_params["id"]
        out: dict[str, Any] = await d.svc().decide(aid, "approve", by="api")
        if body.get("grant_minutes") is not None and out["changed"]:
            out["grant"] = await d.svc().grant(out["agent"], out["capability"], body["grant_minutes"], by="api",
                                               approval=aid)
        return out

    async def api_reject(request: Request, body: dict[str, Any]) -> Any:
        return await d.svc().decide(request.path_params["id"], "reject", by="api", reason=body.get("reason"))

    async def api_grants(request: Request, body: dict[str, Any]) -> Any:
        return {"grants": d.svc().grants(live_only=request.query_params.get("all") is None)}

    async def api_grant(request: Request, body: dict[str, Any]) -> Any:
        return await d.svc().grant(body.get("agent"), body.get("capability"), body.get("minutes"), by="api",
                                   reason=body.get("reason"))

    async def api_revoke_grant(request: Request, body: dict[str, Any]) -> Any:
        return await d.svc().revoke_grant(request.path_params["id"], by="api")

    async def api_agents(request: Request, body: dict[str, Any]) -> Any:
        return {"agents": d.agents_data()}

    async def api_revoke_agent(request: Request, body: dict[str, Any]) -> Any:
        return await d.revoke_agent(request.path_params["name"])

    async def api_audit(request: Request, body: dict[str, Any]) -> Any:
        return await d.audit_query(_filters(request.query_params))

    async def api_verify(request: Request, body: dict[str, Any]) -> Any:
        return await d.audit_verify()

    async def api_secrets(request: Request, body: dict[str, Any]) -> Any:
        return d.secrets_data()

    async def api_packs(request: Request, body: dict[str, Any]) -> Any:
        return d.packs_data()

    async def api_events(request: Request, body: dict[str, Any]) -> Any:
        return StreamingResponse(event_stream(gw, request), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        data = static_files.get(name)
        if data is None:
            return Response("not found", status_code=404)
        ctype = "text/javascript; charset=utf-8" if name.endswith(".js") else "text/css; charset=utf-8"
        return Response(data, media_type=ctype)

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"type": "NotFound", "message": "no such endpoint", "recovery": []}},
                                status_code=404)
        return html(views.error_page(404, "no such page"), 404)

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", overview, methods=["GET"]),
        Route("/approvals", approvals, methods=["GET"]),
        Route("/approvals/{id}", approval, methods=["GET"]),
        Route("/approvals/{id}/approve", approve, methods=["POST"]),
        Route("/approvals/{id}/reject", reject, methods=["POST"]),
        Route("/grants/{id}/revoke", revoke_grant, methods=["POST"]),
        Route("/activity", activity, methods=["GET"]),
        Route("/agents", agents_page, methods=["GET"]),
        Route("/agents/{name}/revoke", revoke_agent, methods=["POST"]),
        Route("/audit", audit_page, methods=["GET"]),
        Route("/audit/verify", verify, methods=["POST"]),
        Route("/secrets", secrets_page, methods=["GET"]),
        Route("/packs", packs_page, methods=["GET"]),
        Route("/api/secrets", api(api_secrets), methods=["GET"]),
        Route("/api/packs", api(api_packs), methods=["GET"]),
        Route("/api/overview", api(api_overview), methods=["GET"]),
        Route("/api/approvals", api(api_approvals), methods=["GET"]),
        Route("/api/approvals/{id}", api(api_approval), methods=["GET"]),
        Route("/api/approvals/{id}/approve", api(api_approve, write=True), methods=["POST"]),
        Route("/api/approvals/{id}/reject", api(api_reject, write=True), methods=["POST"]),
        Route("/api/grants", api(api_grants), methods=["GET"]),
        Route("/api/grants", api(api_grant, write=True), methods=["POST"]),
        Route("/api/grants/{id}/revoke", api(api_revoke_grant, write=True), methods=["POST"]),
        Route("/api/agents", api(api_agents), methods=["GET"]),
        Route("/api/agents/{name}/revoke", api(api_revoke_agent, write=True), methods=["POST"]),
        Route("/api/audit", api(api_audit), methods=["GET"]),
        Route("/api/audit/verify", api(api_verify, write=True), methods=["POST"]),
        Route("/api/events", api(api_events), methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
    ]
    async def server_error(request: Request, exc: Exception) -> Response:
        # Never a traceback to the browser; the gateway log has it.
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"type": "Internal", "message": "internal error", "recovery": []}},
                                status_code=500)
        return html(views.error_page(500, "internal error (see the gateway log)"), 500)

    app = Starlette(routes=routes, exception_handlers={404: not_found, Exception: server_error})
    extra_hosts = [h for h in (gw.config.dashboard.host,) if h not in ("127.0.0.1", "::1", "localhost")]
    return GuardMiddleware(SecurityHeaders(app), gw.config.gateway.allowed_origins, extra_hosts)


def _sse(ev: Any, live: bool) -> str:
    data = {**ev.to_dict(), "live": live, "display": event_display(ev.kind, ev.data)}
    return f"id: {ev.id}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


async def event_stream(gw: Any, request: Request, history: int = 100) -> Any:
    """Recent events, then live ones until the client leaves or the gateway stops."""
    sub = gw.bus.subscribe()
    try:
        last = request.headers.get("last-event-id")
        after = int(last) if last and last.isdigit() else None
        yield "retry: 2000\n\n"
        seen = 0
        for ev in list(gw.bus.history)[-history:]:
            if after is None or ev.id > after:
                yield _sse(ev, False)
            seen = max(seen, ev.id)
        idle = 0.0
        while not (gw.stopping is not None and gw.stopping.is_set()):
            ev = await sub.get(timeout=1.0)
            if ev is None:
                idle += 1.0
                if idle >= 15:
                    idle = 0.0
                    yield ": keepalive\n\n"
                continue
            idle = 0.0
            if ev.id > seen:
                yield _sse(ev, True)
    finally:
        sub.close()
