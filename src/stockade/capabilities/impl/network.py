"""network.*: run inside the per-call sandbox child, in the agent's network namespace.

The allowlist comes from `ctx.extra["egress"]` or the private `_egress` argument added by the
egress part's executor wrapper: the view the egress manager wrote when the policy loaded
(entries, the addresses each allowlisted name resolved to after filtering, the forbidden
ranges, the resolver). Without a view only ip/cidr entries of `ctx.profile.egress` work.
Handlers never resolve a hostname before connecting: they connect to an address taken from
that checked view (no second lookup a rebinding resolver could answer differently), and
nftables in the namespace enforces the same set independently.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from typing import Any

from stockade.capabilities.registry import implements
from stockade.core.errors import StockadeError, err
from stockade.egress import dns
from stockade.egress.rules import (
    Allowlist,
    Url,
    check_hostname,
    denied,
    join_url,
    parse_entries,
    parse_ipv4,
    parse_url,
)

_REDIRECTS = {301, 302, 303, 307, 308}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te",
                      "proxy-authorization", "proxy-connection"}
_CREDENTIAL_HEADERS = {"authorization", "cookie"}
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "+json", "+xml")

# Built when the module is imported (in the zygote, before any sandbox): the child cannot read
# the CA bundle from disk afterwards.
try:
    import certifi

    _TLS = ssl.create_default_context(cafile=certifi.where())
except Exception:  # pragma: no cover - certifi missing: fall back to the system store
    _TLS = ssl.create_default_context()
_TLS.minimum_version = ssl.TLSVersion.TLSv1_2


def _get(ctx: Any, name: str, default: Any = None) -> Any:
    if isinstance(ctx, dict):
        return ctx.get(name, default)
    return getattr(ctx, name, default)


def allowlist_for(ctx: Any, args: dict[str, Any] | None = None) -> tuple[Allowlist, dict[str, Any]]:
    """The agent's checked allowlist (see module docstring). Pops the private `_egress` argument
    the egress part's executor wrapper adds (stockade.egress.setup.ViewInjector)."""
    extra = _get(ctx, "extra") or {}
    view = extra.get("egress") if isinstance(extra, dict) else None
    carried = args.pop("_egress", None) if args is not None else None
    if view is None:
        view = carried
    if isinstance(view, dict) and view.get("entries") is not None:
        return Allowlist.from_view(view), view
    profile = _get(ctx, "profile")
    items = _get(profile, "egress", ()) if profile is not None else ()
    if isinstance(profile, dict):
        items = profile.get("egress", ())
    entries, _ = parse_entries(items or ())
    return Allowlist(tuple(entries)), {"resolver": None}


class _Guard:
    """Shut the socket down at the deadline: a server dripping bytes cannot hold the call."""

    def __init__(self, sock: socket.socket, seconds: float):
        self.fired = threading.Event()
        self.sock = sock
        self.timer = threading.Timer(max(0.0, seconds), self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self.timer.cancel()


def _connect(url: Url, allow: Allowlist, deadline: float) -> tuple[socket.socket, str]:
    """Connect to an address checked for (url.host, url.port); never a DNS lookup."""
    addrs = allow.targets(url.host, url.port)
    last: OSError | None = None
    for ip in addrs:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(min(left, 10.0))
        try:
            s.connect((str(ip), url.port))
            return s, f"{ip}:{url.port}"
        except OSError as e:
            s.close()
            last = e
    if last is None:
        raise err("Timeout", f"no time left to connect to {url.host}:{url.port}")
    if isinstance(last, TimeoutError):
        raise err("Timeout", f"connecting to {url.host}:{url.port} timed out")
    raise err("NetworkError", f"cannot connect to {url.host}:{url.port}: {last.strerror or last}",
              [{"action": "retry_later", "description": "The host refused or is unreachable."}])


class _Conn(http.client.HTTPConnection):
    """HTTPConnection over a socket we already connected to a checked address."""

    def __init__(self, url: Url, sock: socket.socket, timeout: float):
        super().__init__(url.host, url.port, timeout=timeout)
        self._url = url
        self._presock = sock

    def connect(self) -> None:
        s = self._presock
        if self._url.scheme == "https":
            s = _TLS.wrap_socket(s, server_hostname=self._url.host)
        self.sock = s


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers.items():
        if not _TOKEN.match(k):
            raise err("InvalidInput", f"invalid header name {k[:50]!r}")
        if any(c in v for c in "\r\n\x00"):
            raise err("InvalidInput", f"header {k} contains CR, LF or NUL")
        if k.lower() in _FORBIDDEN_HEADERS:
            raise err("InvalidInput", f"header {k} is set by the gateway and cannot be given")
        out[k] = v
    return out


def _is_text(ctype: str) -> bool:
    c = ctype.lower()
    return any(t in c for t in _TEXT_TYPES)


@implements("network.http_request")
def http_request(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    allow, _view = allowlist_for(ctx, args)
    t0 = time.monotonic()
    timeout = float(args.get("timeout", 15))
    ctx_deadline = _get(ctx, "deadline") or 0.0
    deadline = t0 + timeout
    if ctx_deadline:
        deadline = min(deadline, ctx_deadline - 0.25)
    max_bytes = int(args.get("max_bytes", 1024 * 1024))
    method = args.get("method", "GET")
    headers = _check_headers(dict(args.get("headers") or {}))
    if "body" in args and "body_base64" in args:
        raise err("InvalidInput", "give body or body_base64, not both")
    body: bytes | None = None
    if "body" in args:
        body = args["body"].encode()
    elif "body_base64" in args:
        try:
            body = base64.b64decode(args["body_base64"], validate=True)
        except ValueError:
            raise err("InvalidInput", "body_base64 is not valid base64") from None
    follow = bool(args.get("follow_redirects", True))
    max_redirects = int(args.get("max_redirects", 5))
    url = parse_url(args["url"])
    allow.targets(url.host, url.port)   # refuse before anything else happens
    redirects: list[str] = []
    origin = url.origin
    while True:
        sock, address = _connect(url, allow, deadline)
        guard = _Guard(sock, deadline - time.monotonic())
        try:
            status, reason, resp_headers, data = _exchange(url, sock, method, headers, body, max_bytes,
                                                           deadline)
            if guard.fired.is_set():
                raise err("Timeout", "the response did not finish in time")
        except StockadeError as e:
            if guard.fired.is_set() and e.type != "Timeout":
                raise err("Timeout", "the response did not finish in time") from None
            raise
        finally:
            guard.cancel()
            with contextlib.suppress(OSError):
                sock.close()
        loc = next((v for k, v in resp_headers if k.lower() == "location"), None)
        if follow and status in _REDIRECTS and loc is not None:
            if len(redirects) >= max_redirects:
                raise err("NetworkError", f"more than {max_redirects} redirects", redirects=redirects)
            nxt = join_url(url, loc)
            allow.targets(nxt.host, nxt.port)   # every hop re-checked before connecting
            redirects.append(str(nxt))
            if status == 303 or (status in (301, 302) and method not in ("GET", "HEAD")):
                method, body = "GET", None
            if nxt.origin != origin:
                # credentials (possibly vault secrets) never follow a redirect to another origin
                headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
                origin = nxt.origin
            url = nxt
            continue
        ctype = next((v for k, v in resp_headers if k.lower() == "content-type"), "")
        text: str | None = None
        if _is_text(ctype) or not ctype:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        return {
            "status": status, "reason": reason, "url": str(url), "address": address,
            "headers": [[k, v] for k, v in resp_headers],
            "body": text if text is not None else base64.b64encode(data).decode(),
            "body_encoding": "utf-8" if text is not None else "base64",
            "bytes": len(data), "redirects": redirects,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 3),
        }


def _exchange(url: Url, sock: socket.socket, method: str, headers: dict[str, str], body: bytes | None,
              max_bytes: int, deadline: float) -> tuple[int, str, list[tuple[str, str]], bytes]:
    conn = _Conn(url, sock, max(0.01, deadline - time.monotonic()))
    try:
        conn.putrequest(method, url.target, skip_accept_encoding=True)
        sent = {k.lower() for k in headers}
        if "accept-encoding" not in sent:
            conn.putheader("Accept-Encoding", "identity")   # no decompression bombs
        if "user-agent" not in sent:
            conn.putheader("User-Agent", "stockade/network.http_request")
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        chunks: list[bytes] = []
        total = 0
        if method != "HEAD":
            while True:
                if time.monotonic() > deadline:
                    raise err("Timeout", "the response did not finish in time")
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise err("ResourceExhausted", f"response body larger than max_bytes ({max_bytes})",
                              resource="output", limit=max_bytes)
                chunks.append(chunk)
        return resp.status, resp.reason or "", list(resp.getheaders()), b"".join(chunks)
    except StockadeError:
        raise
    except ssl.SSLError as e:
        raise err("NetworkError", f"TLS error with {url.host}: {e.reason or e}") from None
    except TimeoutError:
        raise err("Timeout", f"{url.host}:{url.port} did not answer in time") from None
    except (OSError, http.client.HTTPException) as e:
        if time.monotonic() >= deadline - 0.01:
            raise err("Timeout", "the request did not finish in time") from None
        raise err("NetworkError", f"HTTP exchange with {url.host}:{url.port} failed: {type(e).__name__}: {e}"[:300]) \
            from None
    finally:
        conn.close()


@implements("network.dns_lookup")
def dns_lookup(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    allow, view = allowlist_for(ctx, args)
    name = check_hostname(args["name"])
    if not any(e.host == name for e in allow.entries):
        raise denied(f"{name!r} is not an allowlisted hostname", host=name)
    resolver = view.get("resolver")
    if not resolver:
        raise err("NetworkError", "no DNS resolver is configured for agents (egress.resolver)")
    try:
        ans = dns.query(resolver, name, timeout=float(args.get("timeout", 5)))
    except dns.DnsError as e:
        raise err("NetworkError", f"DNS lookup of {name} failed: {e}") from None
    except OSError as e:
        raise err("NetworkError", f"DNS lookup of {name} failed: {e.strerror or e}") from None
    ok: list[str] = []
    bad: list[str] = []
    for a in sorted(set(ans.addresses)):
        (bad if allow.forbidden.reason(ipaddress.IPv4Address(a)) else ok).append(a)
    return {"name": name, "addresses": ok, "refused": bad, "reachable": list(allow.resolved.get(name, ())),
            "ttl": ans.ttl, "resolver": resolver}


@implements("network.port_check")
def port_check(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    allow, _ = allowlist_for(ctx, args)
    raw = args["host"]
    ip = parse_ipv4(raw)
    host = str(ip) if ip is not None else check_hostname(raw)   # same strict host rules as URLs
    url = Url("http", host, int(args["port"]), "/")
    timeout = float(args.get("timeout", 5))
    t0 = time.monotonic()
    try:
        sock, address = _connect(url, allow, t0 + timeout)
    except StockadeError as e:
        if e.type == "EgressDenied":
            raise
        return {"host": url.host, "port": url.port, "open": False, "error": e.message,
                "latency_ms": round((time.monotonic() - t0) * 1000, 3)}
    sock.close()
    return {"host": url.host, "port": url.port, "open": True, "address": address,
            "latency_ms": round((time.monotonic() - t0) * 1000, 3)}
