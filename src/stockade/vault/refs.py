"""`${secret:NAME}` references: where they may appear, substitution, HMAC signing, encodings.

Pure functions (no vault access, no clock). Positions per capability:
- `network.http_request`: header values, and a `sign: {secret, algorithm: hmac-sha256, header}`
  block (the signature is computed here, in the gateway: the signing key never leaves it);
- `process.run`: `env` values;
- any other capability whose definition sets `secrets: true` (packs): any string value; a
  top-level `base_url` (or `url`) argument is the target the secrets' hosts are checked against.
A reference anywhere else in a secrets-enabled capability's arguments is InvalidInput (nothing
is resolved). Capabilities without `secrets: true` are never scanned: `${secret:X}` is text there.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

from stockade.core.errors import err
from stockade.core.urls import parse_url
from stockade.vault.format import validate_name

REF = re.compile(r"\$\{secret:([^}]*)\}")
HTTP, PROC = "network.http_request", "process.run"
SIGN_PARTS = ("method", "path", "query", "path_query", "body")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    method: str
    path: str
    query: str


@dataclass(frozen=True)
class Plan:
    names: frozenset[str]            # every secret the call references
    text: frozenset[str]             # those substituted into argument text (not only signing keys)
    target: Target | None            # the HTTP request, for host checks and signing
    sign: dict[str, Any] | None      # the validated sign block (network.http_request)


def names_in(text: str) -> list[str]:
    out = []
    for m in REF.finditer(text):
        out.append(validate_ref(m.group(1)))
    return out


def validate_ref(name: str) -> str:
    try:
        return validate_name(name)
    except Exception:
        raise err("InvalidInput", f"invalid secret reference ${{secret:{name[:40]}}}") from None


def _strings(v: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """Every string (keys included) with its path."""
    out: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(v, str):
        out.append((path, v))
    elif isinstance(v, dict):
        for k, x in v.items():
            if isinstance(k, str):
                out.append(((*path, "<key>"), k))
            out.extend(_strings(x, (*path, k)))
    elif isinstance(v, list | tuple):
        for i, x in enumerate(v):
            out.extend(_strings(x, (*path, i)))
    return out


def _where(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path) or "(arguments)"


def _header_items(headers: Any) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, dict):
        return [(k, v) for k, v in headers.items()]
    if isinstance(headers, list):
        return [(h[0], h[1]) for h in headers if isinstance(h, list | tuple) and len(h) == 2]
    return []


def http_target(args: dict[str, Any]) -> Target:
    """The request's scheme/host/port/path/query, parsed by the strict parser the egress part
    connects with (`stockade.core.urls`), so the host we check is the host that is contacted."""
    url = args.get("url")
    if not isinstance(url, str):
        raise err("InvalidInput", "url: a string URL is required when secrets are used")
    method = args.get("method") or "GET"
    if not isinstance(method, str):
        raise err("InvalidInput", "method must be a string")
    u = parse_url(url)
    path, _, query = u.target.partition("?")
    return Target(u.scheme, u.host.lower().rstrip("."), u.port, method.upper(), path or "/", query)


def plan(capability: str, allows_secrets: bool, args: dict[str, Any]) -> Plan:
    """Which secrets a call references; InvalidInput for references where none may be."""
    if not allows_secrets:
        return Plan(frozenset(), frozenset(), None, None)
    names: set[str] = set()
    allowed_paths: set[tuple[Any, ...]] = set()
    text_names: set[str] = set()
    sign = None
    if capability == HTTP:
        for k, v in _header_items(args.get("headers")):
            if isinstance(v, str) and REF.search(v):
                if isinstance(k, str) and REF.search(k):
                    raise err("InvalidInput", "headers: a secret reference may not be a header name")
                names.update(names_in(v))
                allowed_paths.add(("headers", k))
                if isinstance(args.get("headers"), list):
                    allowed_paths.update(("headers", i, 1) for i, h in enumerate(args["headers"])
                                         if isinstance(h, list | tuple) and len(h) == 2 and h[0] == k)
        sign = args.get("sign")
        if sign is not None:
            sign = _check_sign(sign, args)
            text_names = set(names)
            names.add(sign["secret"])
            allowed_paths.add(("sign", "secret"))
    elif capability == PROC:
        env = args.get("env")
        if isinstance(env, dict):
            for k, v in env.items():
                if isinstance(v, str) and REF.search(v):
                    names.update(names_in(v))
                    allowed_paths.add(("env", k))
    else:
        for path, s in _strings(args):
            if path and path[-1] == "<key>":
                continue
            if REF.search(s):
                names.update(names_in(s))
                allowed_paths.add(path)
    for path, s in _strings(args):
        if path in allowed_paths:
            continue
        if REF.search(s):
            where = _where(path[:-1]) + " (a key)" if path and path[-1] == "<key>" else _where(path)
            raise err("InvalidInput", f"{where}: ${{secret:...}} references are not allowed here"
                      + (" (only in headers and sign)" if capability == HTTP else
                         " (only in env)" if capability == PROC else ""))
    target = http_target(args) if capability == HTTP and names else None
    if names and capability not in (HTTP, PROC):
        # A pack: a top-level `base_url` / `url` is where it sends the secrets (host-checked).
        url = args.get("base_url", args.get("url"))
        if isinstance(url, str):
            target = http_target({"url": url})
    text = text_names if sign is not None else names
    return Plan(frozenset(names), frozenset(text), target, sign)


def _check_sign(sign: Any, args: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(sign, dict):
        raise err("InvalidInput", "sign: expected {secret, algorithm: hmac-sha256, header}")
    extra = set(sign) - {"secret", "algorithm", "header", "encoding", "payload", "separator"}
    if extra:
        raise err("InvalidInput", f"sign: unknown keys {sorted(extra)}")
    secret = sign.get("secret")
    if not isinstance(secret, str):
        raise err("InvalidInput", "sign.secret: the name of a secret is required")
    m = REF.fullmatch(secret)
    secret = validate_ref(m.group(1) if m else secret)
    if sign.get("algorithm", "hmac-sha256") != "hmac-sha256":
        raise err("InvalidInput", "sign.algorithm: only hmac-sha256 is supported")
    header = sign.get("header")
    if not isinstance(header, str) or not _HEADER_NAME.match(header):
        raise err("InvalidInput", "sign.header: a header name is required (e.g. X-Signature)")
    enc = sign.get("encoding", "hex")
    if enc not in ("hex", "base64"):
        raise err("InvalidInput", "sign.encoding: hex or base64")
    payload = sign.get("payload", ["method", "path_query", "body"])
    if not isinstance(payload, list) or not payload:
        raise err("InvalidInput", "sign.payload: a non-empty list of parts")
    headers = dict(_header_items(args.get("headers")))
    lower = {k.lower(): v for k, v in headers.items() if isinstance(k, str)}
    for p in payload:
        if not isinstance(p, str) or not (p in SIGN_PARTS or p.startswith("header:") or p.startswith("literal:")):
            raise err("InvalidInput",
                      f"sign.payload: {p!r} is not one of {list(SIGN_PARTS)}, header:NAME, literal:TEXT")
        if p.startswith("header:"):
            hv = lower.get(p[7:].lower())
            if not isinstance(hv, str):
                raise err("InvalidInput", f"sign.payload: {p}: no such request header")
            if REF.search(hv):
                raise err("InvalidInput", f"sign.payload: {p}: a header holding a secret cannot be signed over")
    sep = sign.get("separator", "")
    if not isinstance(sep, str):
        raise err("InvalidInput", "sign.separator must be a string")
    if "body" in payload:
        _body_bytes(args)
    return {"secret": secret, "header": header, "encoding": enc, "payload": payload, "separator": sep}


def _body_bytes(args: dict[str, Any]) -> bytes:
    body, b64 = args.get("body"), args.get("body_base64")
    if body is not None and not isinstance(body, str):
        raise err("InvalidInput", "sign: the body must be a string to be signed")
    if body is not None:
        return body.encode("utf-8")
    if b64 is not None:
        try:
            return base64.b64decode(b64, validate=True)
        except (ValueError, TypeError):
            raise err("InvalidInput", "body_base64 is not valid base64") from None
    return b""


def sign_message(sign: dict[str, Any], target: Target, args: dict[str, Any]) -> bytes:
    """The exact bytes that are signed (documented in docs/vault.md)."""
    lower = {k.lower(): v for k, v in _header_items(args.get("headers")) if isinstance(k, str)}
    parts: list[bytes] = []
    for p in sign["payload"]:
        if p == "method":
            parts.append(target.method.encode())
        elif p == "path":
            parts.append(target.path.encode())
        elif p == "query":
            parts.append(target.query.encode())
        elif p == "path_query":
            parts.append((target.path + ("?" + target.query if target.query else "")).encode())
        elif p == "body":
            parts.append(_body_bytes(args))
        elif p.startswith("header:"):
            parts.append(lower[p[7:].lower()].encode("utf-8"))
        else:
            parts.append(p[8:].encode("utf-8"))
    return sign["separator"].encode("utf-8").join(parts)


def hmac_sha256(key: bytes | bytearray, message: bytes, encoding: str) -> str:
    mac = hmac.new(bytes(key), message, hashlib.sha256).digest()
    return mac.hex() if encoding == "hex" else base64.b64encode(mac).decode()


def substitute(capability: str, args: dict[str, Any], values: dict[str, str],
               signature: tuple[str, str] | None = None) -> dict[str, Any]:
    """A deep copy of args with references replaced (only in allowed positions)."""
    out = copy.deepcopy(args)

    def sub(s: str) -> str:
        return REF.sub(lambda m: values[m.group(1)], s)

    if capability == HTTP:
        h = out.get("headers")
        if isinstance(h, dict):
            out["headers"] = {k: sub(v) if isinstance(v, str) else v for k, v in h.items()}
        elif isinstance(h, list):
            out["headers"] = [[x[0], sub(x[1])] if isinstance(x, list | tuple) and len(x) == 2
                              and isinstance(x[1], str) else x for x in h]
        if "sign" in out:
            del out["sign"]
        if values or signature:
            # Secrets were checked against this URL's host only: never carried to another one.
            out["follow_redirects"] = False
        if signature:
            hdrs = out.get("headers")
            low = signature[0].lower()
            if isinstance(hdrs, list):
                out["headers"] = [x for x in hdrs if not (isinstance(x, list | tuple) and len(x) == 2
                                                          and isinstance(x[0], str) and x[0].lower() == low)]
                out["headers"].append([signature[0], signature[1]])
            else:
                hdrs = {k: v for k, v in (hdrs or {}).items() if not (isinstance(k, str) and k.lower() == low)}
                hdrs[signature[0]] = signature[1]
                out["headers"] = hdrs
    elif capability == PROC:
        if isinstance(out.get("env"), dict):
            out["env"] = {k: sub(v) if isinstance(v, str) else v for k, v in out["env"].items()}
    else:
        def walk(v: Any) -> Any:
            if isinstance(v, str):
                return sub(v)
            if isinstance(v, dict):
                return {k: walk(x) for k, x in v.items()}
            if isinstance(v, list):
                return [walk(x) for x in v]
            return v
        out = walk(out)
    return out


def _b64_cores(b: bytes, alt: bytes | None) -> set[str]:
    """Base64 substrings that appear whenever `b` is embedded at any offset of a longer stream."""
    out = set()
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + b + b"\0\0")
        if alt:
            enc = enc.translate(bytes.maketrans(b"+/", alt))
        start = 4 if k else 0
        end_bytes = k + len(b)                       # bytes fully owned up to here
        end = (end_bytes // 3) * 4
        core = enc[start:end].decode()
        if len(core) >= 8:
            out.add(core)
    return out


def encodings(value: str) -> list[str]:
    """The raw value and the encodings the pipeline must also scrub from results and errors."""
    if not value:
        return []
    b = value.encode("utf-8")
    forms = {value}
    if len(b) >= 4:
        forms |= {b.hex(), b.hex().upper(), base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode(),
                  base64.b64encode(b).decode().rstrip("="), base64.urlsafe_b64encode(b).decode().rstrip("="),
                  quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
        forms |= _b64_cores(b, None) | _b64_cores(b, b"-_")
    return sorted(f for f in forms if f)
