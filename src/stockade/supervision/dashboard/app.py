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
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from stockade.capabilities.impl.system import capability_outlook
from stockade.core import agents as agents_mod
from stockade.core.errors import StockadeError, err
from stockade.core.types import Tier
from stockade.edge.bounded import parse_json
from stockade.edge.security import GuardMiddleware
from stockade.supervision import audit_view, securitytxt, tokens
from stockade.supervision.dashboard import views
from stockade.supervision.metrics import CONTENT_TYPE as METRICS_TYPE
from stockade.supervision.metrics import Metrics
from stockade.supervision.shown import event_display

COOKIE = "__Host-stockade"
LOGIN_COOKIE = "__Host-stockade-login"
STATIC = Path(__file__).parent / "static"
log = logging.getLogger("stockade.dashboard")
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
        self.metrics = Metrics(gw)

    # -- auth helpers --------------------------------------------------------------------------
    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), tokens.current_hash(self.db))

    def who(self, request: Request) -> dict[str, Any]:
        """Who decides, for the audit record: the dashboard session (a digest of its id, never the
        id) or the admin token on the JSON API, and the client address."""
        sid = request.cookies.get(COOKIE)
        client = request.client.host if request.client else None
        if _bearer(request) is None and sid and self.session(request) is not None:
            return {"via": "dashboard", "session": hashlib.sha256(sid.encode()).hexdigest()[:16], "client": client}
        return {"via": "dashboard-api", "auth": "admin-token", "client": client}

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
            vstate = ("not set up" if vault.get("initialized") is False
                      else "sealed" if vault.get("sealed") else "unsealed" if "sealed" in vault
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
            ranges: dict[str, dict[str, Any]] = {}      # capabilities whose arguments decide the tier
            for d in p.registry.all():
                look = capability_outlook(p.policy, a.name, d, owner=True)
                tiers[d.name] = look["tier"]
                if look.get("depends_on_arguments"):
                    ranges[d.name] = look
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
                        "revoked": a.revoked_at, "pending": pending, "tiers": tiers, "ranges": ranges,
                        "sandbox": sandbox})
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
        records, bad = await self._audit_records(filters)
        return {"available": True, "records": records, "undecodable": bad, "filters": filters,
                "verify": self.last_verify}

    async def _audit_records(self, filters: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """The index has no tier column: with a tier filter, read the newest 1000 matching the
        rest and keep those decided at that tier."""
        tier = filters.get("tier")
        if not tier:
            return await audit_view.query(self.gw, filters)
        recs, bad = await audit_view.query(self.gw, {**filters, "limit": 1000})
        return [r for r in recs if record_tier(r) == tier][: filters["limit"]], bad

    async def audit_session(self, session_id: str) -> dict[str, Any]:
        if not audit_view.available(self.gw):
            return {"available": False, "session": session_id, "calls": []}
        return {"available": True, **await audit_view.session(self.gw, session_id)}

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
        return {"available": True, "sealed": bool(getattr(v, "sealed", True)), "initialized": f.exists(),
                "secrets": rows}

    def packs_data(self) -> dict[str, Any]:
        try:
            from stockade.packs import store as packs_store

            rows = packs_store.installed(self.db)
        except Exception:   # the packs part is absent or has not created its tables
            return {"available": False, "packs": []}
        return {"available": True, "packs": [{"name": p.name, "version": p.version, "publisher": p.publisher,
                                              "key_id": p.key_id, "manifest_sha256": p.manifest_sha256,
                                              "installed_at": p.installed_at} for p in rows]}

    async def revoke_agent(self, name: str, by: dict[str, Any]) -> dict[str, Any]:
        # The approvals service revokes, expires the agent's approvals and ends its grants in one
        # transaction, audits each and wakes the calls it holds.
        return await self.svc().revoke_agent(name, by=by)


def record_tier(r: dict[str, Any]) -> Any:
    """The tier a call record was decided at (events have none)."""
    d = r.get("decision")
    return d.get("tier") if isinstance(d, dict) else None


def _filters(q: Any) -> dict[str, Any]:
    f: dict[str, Any] = {}
    for k in ("agent", "capability", "kind", "since", "until", "tier"):
        v = q.get(k)
        if v:
            if len(v) > 200:
                raise err("InvalidInput", f"{k} too long")
            f[k] = v
    if f.get("tier") not in (None, *Tier):
        raise err("InvalidInput", f"tier must be one of {', '.join(Tier)}")
    lim = q.get("limit") or "100"
    if not lim.isdigit() or not 1 <= int(lim) <= 1000:
        raise err("InvalidInput", "limit must be 1..1000")
    f["limit"] = int(lim)
    return f


def _minutes(form: dict[str, Any]) -> float | None:
    v = form.get("grant_minutes")
    if v in (None, ""):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise err("InvalidInput", "grant_minutes must be a number") from None


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status)


def _set_cookie(resp: Response, name: str, value: str, max_age: int) -> None:
    resp.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error_response(request: Request, e: StockadeError, csrf: str | None = None) -> Response:
    """The one error mapping for pages and /api: the status is `e.http_status` (core.errors);
    /api answers `{"error": {type, message, recovery}}`, a page shows the type and message."""
    if _is_api(request):
        return JSONResponse({"error": e.to_dict()}, status_code=e.http_status)
    return _html(views.error_page(e.http_status, f"{e.type}: {e.message}", csrf), e.http_status)


# Owner-facing hints (the agent-facing defaults of core.errors talk about agent keys).
_LOG_IN = [{"action": "log_in", "description": "Log in at /login, or send 'Authorization: Bearer <admin token>' "
                                               "(print one with: stockade admin token)."}]
_RELOAD = [{"action": "reload", "description": "Reload the page and try again."}]

# (method, path, kind, handler): kind says what is checked before the handler runs.
#   open: nothing (login, static files) · page: a session · action: a session, CSRF and same origin
#   api: admin token or session · api_write: that, plus CSRF (session) or same origin (bearer)
ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/login", "open", "login_page"),
    ("POST", "/login", "open", "login_post"),
    ("POST", "/logout", "open", "logout"),
    ("GET", "/", "page", "overview"),
    ("GET", "/approvals", "page", "approvals"),
    ("GET", "/approvals/{id}", "page", "approval"),
    ("POST", "/approvals/{id}/approve", "action", "approve"),
    ("POST", "/approvals/{id}/reject", "action", "reject"),
    ("POST", "/grants/{id}/revoke", "action", "revoke_grant"),
    ("GET", "/activity", "page", "activity"),
    ("GET", "/agents", "page", "agents"),
    ("GET", "/agents/{name}/revoke", "page", "revoke_agent_confirm"),
    ("POST", "/agents/{name}/revoke", "action", "revoke_agent"),
    ("GET", "/audit", "page", "audit"),
    ("GET", "/audit/session/{id}", "page", "audit_session"),
    ("POST", "/audit/verify", "action", "verify"),
    ("GET", "/secrets", "page", "secrets"),
    ("GET", "/packs", "page", "packs"),
    ("GET", "/api/secrets", "api", "api_secrets"),
    ("GET", "/api/packs", "api", "api_packs"),
    ("GET", "/api/overview", "api", "api_overview"),
    ("GET", "/api/approvals", "api", "api_approvals"),
    ("GET", "/api/approvals/{id}", "api", "api_approval"),
    ("POST", "/api/approvals/{id}/approve", "api_write", "api_approve"),
    ("POST", "/api/approvals/{id}/reject", "api_write", "api_reject"),
    ("GET", "/api/grants", "api", "api_grants"),
    ("POST", "/api/grants", "api_write", "api_grant"),
    ("POST", "/api/grants/{id}/revoke", "api_write", "api_revoke_grant"),
    ("GET", "/api/agents", "api", "api_agents"),
    ("POST", "/api/agents/{name}/revoke", "api_write", "api_revoke_agent"),
    ("GET", "/api/audit", "api", "api_audit"),
    ("GET", "/api/audit/session/{id}", "api", "api_audit_session"),
    ("POST", "/api/audit/verify", "api_write", "api_verify"),
    ("GET", "/api/events", "api", "api_events"),
    ("GET", "/metrics", "api", "metrics"),     # Prometheus text format; admin token (Bearer) or session
    ("GET", "/static/{name}", "open", "static"),
    ("GET", "/.well-known/security.txt", "open", "security_txt"),
)


class DashboardApp:
    """The dashboard's HTTP handlers, one method per route of `ROUTES`; the checks each kind of
    route needs run in `_endpoint`, and every StockadeError goes through `error_response`."""

    def __init__(self, gw: Any, d: Dashboard):
        self.gw = gw
        self.d = d
        self.static_files = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.suffix in (".js", ".css")}

    def routes(self) -> list[Route]:
        return [Route(path, self._endpoint(kind, getattr(self, name)), methods=[method])
                for method, path, kind, name in ROUTES]

    def _endpoint(self, kind: str, handler: Any) -> Any:
        checks = {"open": self._open, "page": self._page, "action": self._action, "api": self._api,
                  "api_write": self._api}[kind]
        write = kind == "api_write"

        async def endpoint(request: Request) -> Response:
            return await checks(request, handler, write)
        return endpoint

    # -- the checks per kind of route --------------------------------------------------------------
    async def _open(self, request: Request, handler: Any, write: bool) -> Response:
        try:
            resp: Response = await handler(request)
            return resp
        except StockadeError as e:
            return error_response(request, e)

    async def _page(self, request: Request, handler: Any, write: bool) -> Response:
        s = self.d.session(request)
        if s is None:
            return RedirectResponse("/login", status_code=303)
        try:
            resp: Response = await handler(request, s)
            return resp
        except StockadeError as e:
            return error_response(request, e, s.csrf)

    async def _action(self, request: Request, handler: Any, write: bool) -> Response:
        """A form POST from a page: session + CSRF + same origin, then the handler redirects back."""
        s = self.d.session(request)
        if s is None:
            return error_response(request, err("Unauthenticated", "log in first", _LOG_IN))
        try:
            form = await _form(request)
            if not self.d.csrf_ok(s, form, request):
                raise err("Forbidden", "CSRF check failed: reload the page and try again", _RELOAD)
            resp: Response = await handler(request, s, form)
            return resp
        except StockadeError as e:
            return error_response(request, e, s.csrf)

    async def _api(self, request: Request, handler: Any, write: bool) -> Response:
        ok, s = self.d.api_auth(request)
        try:
            if not ok:
                raise err("Unauthenticated", "admin token or session required", _LOG_IN)
            body: dict[str, Any] = {}
            if write:
                body = await _form(request)
                if s is not None and not self.d.csrf_ok(s, body, request):
                    raise err("Forbidden", "CSRF check failed", _RELOAD)
                if s is None and not _same_origin(request):
                    raise err("Forbidden", "cross-origin refused", [])
            out = await handler(request, body)
        except StockadeError as e:
            return error_response(request, e)
        return out if isinstance(out, Response) else JSONResponse(out)

    # -- login / logout ----------------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        lc = secrets.token_urlsafe(24)
        resp = _html(views.login(lc))
        _set_cookie(resp, LOGIN_COOKIE, lc, 600)
        return resp

    async def login_post(self, request: Request) -> Response:
        if not _same_origin(request):
            raise err("Forbidden", "cross-origin login refused", [])
        form = await _form(request)
        lc = request.cookies.get(LOGIN_COOKIE) or ""
        sent = form.get("login_csrf") or ""
        now = time.time()
        self.d._fails = [t for t in self.d._fails if now - t < 60]
        if len(self.d._fails) >= 20:
            raise err("RateLimited", "too many failed logins; wait a minute", [])
        if not lc or not isinstance(sent, str) or not hmac.compare_digest(lc.encode(), sent.encode()):
            return _html(views.login(secrets.token_urlsafe(24), "Your login form expired; try again."), 400)
        th = tokens.check(self.d.db, form.get("token"))
        if th is None:
            self.d._fails.append(now)
            await asyncio.sleep(0.25)
            lc2 = secrets.token_urlsafe(24)
            resp = _html(views.login(lc2, "That is not the current admin token."), 401)
            _set_cookie(resp, LOGIN_COOKIE, lc2, 600)
            return resp
        sid = self.d.sessions.create(th)
        await self.gw.pipeline.record_event("dashboard.login", by="dashboard")
        ok = RedirectResponse("/", status_code=303)
        _set_cookie(ok, COOKIE, sid, self.d.sessions.ttl)
        ok.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return ok

    async def logout(self, request: Request) -> Response:
        s = self.d.session(request)
        if s is None:
            return RedirectResponse("/login", status_code=303)
        form = await _form(request)
        if not self.d.csrf_ok(s, form, request):
            raise err("Forbidden", "CSRF check failed", _RELOAD)
        self.d.sessions.drop(request.cookies.get(COOKIE))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return resp

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        data = self.static_files.get(name)
        if data is None:
            return Response("not found", status_code=404)
        ctype = "text/javascript; charset=utf-8" if name.endswith(".js") else "text/css; charset=utf-8"
        return Response(data, media_type=ctype)

    async def security_txt(self, request: Request) -> Response:
        """RFC 9116: how to report a vulnerability in this deployment (open: reporters have no login)."""
        canonical = str(request.url.replace(query="", fragment=""))
        text = securitytxt.build(self.gw.config.security, canonical)
        if text is None:
            return Response("no security contact is published here\n", status_code=404, media_type="text/plain")
        return Response(text, media_type="text/plain; charset=utf-8")

    # -- pages -------------------------------------------------------------------------------------
    async def overview(self, request: Request, s: Session) -> Response:
        return _html(views.overview(self.d.overview_data(), s.csrf))

    async def approvals(self, request: Request, s: Session) -> Response:
        return _html(views.approvals(self.d.svc().list(None, 200), self.d.svc().grants(), s.csrf,
                                     self._just_decided(request.query_params.get("done"))))

    def _just_decided(self, aid: str | None) -> dict[str, Any] | None:
        """The approval named in `?done=` (after a decision), for the confirmation notice."""
        if not aid or len(aid) > 100:
            return None
        try:
            shown: dict[str, Any] = self.d.svc().show(aid)
        except StockadeError:
            return None
        return shown

    async def approval(self, request: Request, s: Session) -> Response:
        return _html(views.approval_page(self.d.svc().show(request.path_params["id"]), s.csrf))

    async def activity(self, request: Request, s: Session) -> Response:
        return _html(views.activity(s.csrf))

    async def agents(self, request: Request, s: Session) -> Response:
        return _html(views.agents(self.d.agents_data(), s.csrf))

    async def revoke_agent_confirm(self, request: Request, s: Session) -> Response:
        name = request.path_params["name"]
        if not any(a.name == name and a.active for a in agents_mod.list_all(self.d.db)):
            raise err("NotFound", "no active agent by that name", [])
        return _html(views.revoke_confirm(name, s.csrf))

    async def audit(self, request: Request, s: Session) -> Response:
        return _html(views.audit(await self.d.audit_query(_filters(request.query_params)), s.csrf))

    async def audit_session(self, request: Request, s: Session) -> Response:
        return _html(views.session_page(await self.d.audit_session(request.path_params["id"]), s.csrf))

    async def secrets(self, request: Request, s: Session) -> Response:
        return _html(views.secrets(self.d.secrets_data(), s.csrf))

    async def packs(self, request: Request, s: Session) -> Response:
        return _html(views.packs(self.d.packs_data(), s.csrf))

    # -- page actions (form POSTs) -----------------------------------------------------------------
    async def approve(self, request: Request, s: Session, form: dict[str, Any]) -> Response:
        aid = request.path_params["id"]
        minutes = _minutes(form)
        # an expired one raises: no grant either
        out = await self.d.svc().decide(aid, "approve", by=self.d.who(request))
        if minutes is not None and out["changed"]:
            await self.d.svc().grant(out["agent"], out["capability"], minutes, by=self.d.who(request),
                                     approval=aid)
        return RedirectResponse(f"/approvals?done={quote(aid, safe='')}", status_code=303)

    async def reject(self, request: Request, s: Session, form: dict[str, Any]) -> Response:
        aid = request.path_params["id"]
        await self.d.svc().decide(aid, "reject", by=self.d.who(request), reason=form.get("reason") or None)
        return RedirectResponse(f"/approvals?done={quote(aid, safe='')}", status_code=303)

    async def revoke_grant(self, request: Request, s: Session, form: dict[str, Any]) -> Response:
        await self.d.svc().revoke_grant(request.path_params["id"], by=self.d.who(request))
        return RedirectResponse("/approvals", status_code=303)

    async def revoke_agent(self, request: Request, s: Session, form: dict[str, Any]) -> Response:
        await self.d.revoke_agent(request.path_params["name"], self.d.who(request))
        return RedirectResponse("/agents", status_code=303)

    async def verify(self, request: Request, s: Session, form: dict[str, Any]) -> Response:
        await self.d.audit_verify()
        return RedirectResponse("/audit", status_code=303)

    # -- /api --------------------------------------------------------------------------------------
    async def api_overview(self, request: Request, body: dict[str, Any]) -> Any:
        return self.d.overview_data()

    async def api_approvals(self, request: Request, body: dict[str, Any]) -> Any:
        status = request.query_params.get("status") or None
        return {"approvals": self.d.svc().list(status, 200), "grants": self.d.svc().grants()}

    async def api_approval(self, request: Request, body: dict[str, Any]) -> Any:
        return self.d.svc().show(request.path_params["id"])

    async def api_approve(self, request: Request, body: dict[str, Any]) -> Any:
        aid = request.path_params["id"]
        out: dict[str, Any] = await self.d.svc().decide(aid, "approve", by=self.d.who(request))
        if body.get("grant_minutes") is not None and out["changed"]:
            out["grant"] = await self.d.svc().grant(out["agent"], out["capability"], body["grant_minutes"],
                                                    by=self.d.who(request), approval=aid)
        return out

    async def api_reject(self, request: Request, body: dict[str, Any]) -> Any:
        return await self.d.svc().decide(request.path_params["id"], "reject", by=self.d.who(request),
                                         reason=body.get("reason"))

    async def api_grants(self, request: Request, body: dict[str, Any]) -> Any:
        return {"grants": self.d.svc().grants(live_only=request.query_params.get("all") is None)}

    async def api_grant(self, request: Request, body: dict[str, Any]) -> Any:
        return await self.d.svc().grant(body.get("agent"), body.get("capability"), body.get("minutes"),
                                        by=self.d.who(request), reason=body.get("reason"))

    async def api_revoke_grant(self, request: Request, body: dict[str, Any]) -> Any:
        return await self.d.svc().revoke_grant(request.path_params["id"], by=self.d.who(request))

    async def api_agents(self, request: Request, body: dict[str, Any]) -> Any:
        return {"agents": self.d.agents_data()}

    async def api_revoke_agent(self, request: Request, body: dict[str, Any]) -> Any:
        return await self.d.revoke_agent(request.path_params["name"], self.d.who(request))

    async def api_audit(self, request: Request, body: dict[str, Any]) -> Any:
        return await self.d.audit_query(_filters(request.query_params))

    async def api_audit_session(self, request: Request, body: dict[str, Any]) -> Any:
        return await self.d.audit_session(request.path_params["id"])

    async def api_verify(self, request: Request, body: dict[str, Any]) -> Any:
        return await self.d.audit_verify()

    async def api_secrets(self, request: Request, body: dict[str, Any]) -> Any:
        return self.d.secrets_data()

    async def api_packs(self, request: Request, body: dict[str, Any]) -> Any:
        return self.d.packs_data()

    async def api_events(self, request: Request, body: dict[str, Any]) -> Any:
        return StreamingResponse(event_stream(self.gw, request), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def metrics(self, request: Request, body: dict[str, Any]) -> Any:
        return Response(self.d.metrics.render(), media_type=METRICS_TYPE)

    # -- what no route matched, and bugs -----------------------------------------------------------
    async def not_found(self, request: Request, exc: Exception) -> Response:
        return error_response(request, err("NotFound", "no such endpoint" if _is_api(request) else "no such page", []))

    async def server_error(self, request: Request, exc: Exception) -> Response:
        # Never a traceback to the browser; the gateway log has it.
        log.error("dashboard: unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(request, err("Internal", "internal error (see the gateway log)"))


def build_app(gw: Any) -> Any:
    d = Dashboard(gw)
    gw.dashboard = d
    handlers = DashboardApp(gw, d)
    app = Starlette(routes=handlers.routes(),
                    exception_handlers={404: handlers.not_found, Exception: handlers.server_error})
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
