"""The pack format (docs/design.md "Formats") as pure functions over bytes.

A pack is `pack.yaml` + `src/**.py` + optional `requirements.lock` + `SIGNATURE`. The signature
covers a canonical manifest: the pack's name, version, optional expiry and, for every file except
SIGNATURE, its path, size and SHA-256. Verification recomputes that manifest from the bytes at
hand and requires it to equal the signed one exactly, so a changed, added or removed file, a
swapped signature or an older signed version is refused with the file it concerns.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockade.core import yamlfile
from stockade.core.errors import ConfigError, err
from stockade.core.types import CAPABILITY_NAME_PATTERN as NAME_PATTERN
from stockade.core.types import TierName
from stockade.packs.sigcheck import (  # noqa: F401 - re-exported: the pack format's public names
    DOMAIN,
    MAX_FILES,
    MAX_PACK_BYTES,
    SIGNATURE_FORMAT,
    PackError,
    _compare,
    build_manifest,
    canonical,
    check_expiry,
    check_path,
    check_signature,
    key_id,
    pack_error,
    parse_signature,
    sign,
)

PACK_NAME = r"^[a-z][a-z0-9-]{0,47}$"
VERSION = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$"

# Capability families the gateway owns, today or announced. A pack's capabilities are named
# `<family>.<action>`, so a pack named like one of these would inherit every rule, grant and vault
# scope written for the built-ins (`system.*: autonomous`). The registry's own families are added
# at install and load (`check_pack_name(builtin_families=...)`), so a family that lands later is
# covered without editing this list.
RESERVED_FAMILIES = frozenset({
    "system", "agent", "agents", "filesystem", "process", "network", "secrets", "state", "vault", "audit",
    "approvals", "capabilities", "tasks", "packs", "pack", "policy", "egress", "sandbox", "perimeter",
    "supervision", "gateway", "dashboard", "admin", "owner", "stockade", "core", "mcp", "upstream", "upstreams",
})


def pack_family(name: str) -> str:
    """The capability prefix a pack name yields (`my-pack` -> `my_pack`)."""
    return name.replace("-", "_")


def check_pack_name(name: str, builtin_families: Iterable[str] = (), upstreams: Iterable[str] = ()) -> None:
    """Pure: refuse a pack name that is (or spells) a built-in family or an upstream server's name.

    `upstreams` is the hook for proxied MCP servers, whose tools are named `<server>.<tool>`."""
    fam = pack_family(name)
    taken = RESERVED_FAMILIES | {pack_family(f) for f in builtin_families}
    if fam in taken:
        raise err("InvalidInput", f"pack name {name!r} is reserved: {fam}.* is a built-in capability family",
                  file="pack.yaml")
    if fam in {pack_family(u) for u in upstreams}:
        raise err("InvalidInput", f"pack name {name!r} is reserved: an upstream server is named {fam}",
                  file="pack.yaml")


# -- pack.yaml -----------------------------------------------------------------------------------
class _Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    egress: list[str] = []
    memory: str | int | None = None
    seccomp: Literal["default", "strict"] = "default"
    timeout: float | None = Field(None, gt=0, le=600)


class _Capability(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    entry: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
    purpose: str = Field(min_length=1)
    when_to_use: str = Field(min_length=1)
    default_tier: TierName = "notify"
    side_effects: bool = True
    secrets: bool = False
    input: dict[str, Any]
    output: dict[str, Any]
    errors: list[str] = []


class _McpServer(BaseModel):
    """The pack is (also) an MCP server: `entry` (module under src/ : function) serves MCP on
    stdin/stdout; `stockade upstream add NAME --pack NAME` runs it confined (docs/upstream.md)."""
    model_config = ConfigDict(extra="forbid")
    entry: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class PackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=PACK_NAME)
    version: str = Field(pattern=VERSION)
    publisher: str = Field(pattern=r"^[a-z][a-z0-9-]{0,63}$")
    min_stockade: str = Field("0.0.0", pattern=VERSION)
    description: str = ""
    capabilities: list[_Capability] = Field(default_factory=list)
    sandbox: _Profile = _Profile()
    mcp_server: _McpServer | None = None


def parse_pack_yaml(text: str, fname: str = "pack.yaml") -> PackSpec:
    data, lines = yamlfile.loads(text, fname)
    if not isinstance(data, dict):
        raise ConfigError([f"{fname}:1: expected a mapping"])
    try:
        spec = PackSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(yamlfile.pydantic_errors(e, fname, lines)) from None
    errors = []
    if not spec.capabilities and spec.mcp_server is None:
        errors.append(f"{fname}:1: capabilities: a pack declares at least one capability or an mcp_server")
    if pack_family(spec.name) in RESERVED_FAMILIES:
        errors.append(f"{fname}:{yamlfile.line_of(lines, ('name',))}: name: {spec.name!r} is reserved "
                      "(a built-in capability family)")
    for i, c in enumerate(spec.capabilities):
        if not c.name.startswith(f"{spec.name.replace('-', '_')}."):
            errors.append(f"{fname}:{yamlfile.line_of(lines, ('capabilities', i, 'name'))}: capability "
                          f"{c.name!r} must be named '{spec.name.replace('-', '_')}.<action>'")
    if len({c.name for c in spec.capabilities}) != len(spec.capabilities):
        errors.append(f"{fname}:1: duplicate capability names")
    if errors:
        raise ConfigError(errors)
    return spec


def version_tuple(v: str) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v.split("."))
    return a, b, c


def check_lockfile(text: str, fname: str = "requirements.lock") -> list[str]:
    """Pure: every requirement pinned `name==version` with at least one --hash=sha256:. Returns names."""
    names = []
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = i
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append((start, buf.strip()))
        buf = ""
    if buf.strip():
        logical.append((start, buf.strip()))
    for lineno, entry in logical:
        if entry.startswith("-"):
            raise pack_error(f"line {lineno}: options are not allowed in a pack lock ({entry.split()[0]})", fname,
                             "InvalidInput")
        req = entry.split()[0]
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$", req)
        if not m:
            raise pack_error(f"line {lineno}: {req!r} is not pinned as name==version", fname, "InvalidInput")
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", entry)
        if not hashes:
            raise pack_error(f"line {lineno}: {req} has no --hash=sha256:", fname, "InvalidInput")
        names.append(m.group(1).lower())
    return names


@dataclass(frozen=True)
class Verified:
    spec: PackSpec
    manifest: dict[str, Any]
    key_id: str
    publisher: str
    manifest_sha256: str


def verify(files: dict[str, bytes], signature: bytes, trusted: dict[str, tuple[str, bytes]],
           now: datetime | None = None) -> Verified:
    """Pure. `trusted` maps key_id -> (publisher name, raw Ed25519 public key).

    Raises PackError naming the file that fails. Order: structure, signature over the signed
    manifest, then the recomputed manifest must equal it (so no unsigned byte is ever trusted)."""
    for p in files:
        check_path(p)
    kid, signed, sig = parse_signature(signature)
    if kid not in trusted:
        raise pack_error(f"signed by key {kid}, which is not trusted (stockade pack trust)", "SIGNATURE")
    publisher, raw = trusted[kid]
    check_signature(signed, sig, raw)
    if "pack.yaml" not in files:
        raise pack_error("missing", "pack.yaml", "InvalidInput")
    try:
        spec = parse_pack_yaml(files["pack.yaml"].decode("utf-8"))
    except (UnicodeDecodeError, ConfigError) as e:
        msg = "; ".join(e.errors) if isinstance(e, ConfigError) else "not UTF-8"
        raise pack_error(f"invalid: {msg}", "pack.yaml", "InvalidInput") from None
    actual = build_manifest(spec.name, spec.version, files, signed.get("expires"))
    _compare(signed, actual)
    if spec.publisher != publisher:
        raise pack_error(f"pack.yaml says publisher {spec.publisher!r} but the key is trusted as {publisher!r}",
                         "SIGNATURE")
    check_expiry(signed, (now or datetime.now(UTC)).timestamp())
    if "requirements.lock" in files:
        check_lockfile(files["requirements.lock"].decode("utf-8", "replace"))
    return Verified(spec, signed, kid, publisher, hashlib.sha256(canonical(signed)).hexdigest())


