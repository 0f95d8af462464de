"""Strict URL, hostname and IPv4 parsing: how stockade spells a network destination.

Pure (no sockets, no DNS). One parser for everything that decides on a URL: egress checks the
address a request connects to with it, and policy conditions (`url_host_in`) match the host
exactly as egress will spell it, so the two can never read one URL two ways. It lives in the
bottom layer because both the policy core and the egress part use it.

* only http/https, no userinfo, no IPv6 literals, no percent-encoded hosts;
* only canonical dotted-quad IPv4 (no decimal/octal/hex/short spellings);
* ASCII LDH hostnames only (no IDN, no punycode), lower-cased, no trailing dot.

Refusals are `EgressDenied` (or `InvalidInput` for a non-string or over-long URL).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from stockade.core.errors import StockadeError, err

IPv4 = ipaddress.IPv4Address

MAX_URL = 8192
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def denied(message: str, **data: Any) -> StockadeError:
    return err("EgressDenied", message, [
        {"action": "check_allowlist", "description": "Only hosts and ports listed in the agent's sandbox.egress "
                                                     "policy are reachable; ask the owner to add one."}], **data)


# -- addresses ---------------------------------------------------------------------------------
def parse_ipv4(text: str) -> IPv4 | None:
    """Canonical dotted-quad only ("1.2.3.4"); None for anything else.

    Refuses the spellings inet_aton accepts but humans do not read as the same address:
    "2130706433", "0177.0.0.1", "0x7f.1", "127.1", leading zeros, "+1", whitespace.
    """
    parts = text.split(".")
    if len(parts) != 4:
        return None
    for p in parts:
        if not p or not p.isascii() or not p.isdigit() or len(p) > 3 or (len(p) > 1 and p[0] == "0"):
            return None
        if int(p) > 255:
            return None
    return IPv4(text)


def looks_numeric(host: str) -> bool:
    """True for hosts a URL parser might treat as an IP spelling (last label numeric / hex)."""
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return bool(last) and (last.isdigit() or bool(re.fullmatch(r"0x[0-9a-f]*", last)))


def check_hostname(host: str) -> str:
    """Lower-cased ASCII LDH hostname, or EgressDenied. IDN and punycode are refused."""
    if not host.isascii():
        raise denied("internationalised (IDN) hostnames are not allowed", host=host[:255])
    h = host.lower()
    if h.endswith("."):
        h = h[:-1]
    if not h or len(h) > 253:
        raise denied("invalid hostname", host=host[:255])
    labels = h.split(".")
    for lab in labels:
        if not _LABEL.match(lab):
            raise denied("invalid hostname (letters, digits and '-' only)", host=host[:255])
        if lab.startswith("xn--"):
            raise denied("punycode (IDN) hostnames are not allowed", host=host[:255])
    if looks_numeric(h):
        raise denied("numeric host spellings are not allowed; use a dotted-quad IPv4 address", host=host[:255])
    return h


# -- URLs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Url:
    scheme: str
    host: str          # checked hostname or canonical IPv4
    port: int
    target: str        # path + query, starts with "/"

    @property
    def origin(self) -> str:
        default = _DEFAULT_PORTS[self.scheme] == self.port
        return f"{self.scheme}://{self.host}" + ("" if default else f":{self.port}")

    def __str__(self) -> str:
        return self.origin + self.target


def parse_url(url: Any) -> Url:
    """Strict absolute http(s) URL parser -> Url, or EgressDenied/InvalidInput."""
    if not isinstance(url, str) or not url:
        raise err("InvalidInput", "url must be a non-empty string")
    if len(url) > MAX_URL:
        raise err("InvalidInput", f"url longer than {MAX_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise denied("url contains whitespace, control characters or backslashes")
    m = _SCHEME_RE.match(url)
    if not m:
        raise denied("url must be absolute (http:// or https://)")
    scheme = m.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise denied(f"scheme {scheme!r} is not allowed (http and https only)", scheme=scheme[:20])
    rest = url[m.end():]
    if not rest.startswith("//"):
        raise denied("url must have the form scheme://host[:port]/path")
    rest = rest[2:]
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1:
            end = min(end, i)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise denied("urls with user information (user:pass@) are not allowed")
    if authority.startswith("[") or "]" in authority:
        raise denied("IPv6 literals are not allowed")
    if "%" in authority:
        raise denied("percent-encoded hosts are not allowed")
    if authority.count(":") > 1:
        raise denied("invalid host:port")
    host, sep, port_s = authority.partition(":")
    if sep:
        if not port_s.isascii() or not port_s.isdigit() or len(port_s) > 5 or not 0 < int(port_s) < 65536:
            raise denied("invalid port", port=port_s[:10])
        port = int(port_s)
    else:
        port = _DEFAULT_PORTS[scheme]
    if not host:
        raise denied("url has no host")
    ip = parse_ipv4(host)
    hostname = str(ip) if ip is not None else check_hostname(host)
    tail = tail.split("#", 1)[0]
    if not tail.startswith("/"):
        tail = "/" + tail
    return Url(scheme, hostname, port, tail)


def join_url(base: Url, location: str) -> Url:
    """Resolve a redirect Location against `base`, then check it as strictly as a new URL."""
    if not isinstance(location, str) or not location:
        raise denied("redirect without a Location")
    loc = location.strip()
    if _SCHEME_RE.match(loc):
        return parse_url(loc)  # absolute (any other scheme, or "http:x" without //, is refused)
    if loc.startswith("//"):
        return parse_url(f"{base.scheme}:{loc}")
    if loc.startswith("/"):
        return parse_url(base.origin + loc)
    # relative path
    path = base.target.split("?", 1)[0]
    directory = path.rsplit("/", 1)[0]
    return parse_url(f"{base.origin}{directory}/{loc}")
