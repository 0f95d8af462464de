"""`<home>/upstream.yaml`: the MCP servers stockade fronts (pure parsing and rendering).

    servers:
      time:
        command: /opt/mcp/venv/bin/mcp-server-time      # absolute path inside the sandbox's view
        args: [--local-timezone, UTC]
        env: {API_TOKEN: "${secret:time_token}"}         # secrets: given to this server at start
        egress: []                                       # host:port / cidr:port; empty = no network
        filesystem:                                      # host directories it sees, at their paths
          - {path: /opt/mcp/venv, mode: ro}
        instances: per-agent                             # or shared
        timeout: 60                                      # seconds per call
        max_output_bytes: 1MiB
        memory: 512MiB
        pids: 128
        cpu: 1

A server that already runs elsewhere on loopback is declared by its Streamable HTTP endpoint
instead of a command (it is not started nor confined by stockade; its calls go through the
same pipeline):

      notes:
        url: http://127.0.0.1:8931/mcp                   # loopback only
        headers: {Authorization: "Bearer ${secret:notes_token}"}   # sent to that server only

A signed pack may declare an MCP server as its entry (`mcp_server: {entry: mod:func}` in its
pack.yaml); `pack: NAME` runs it confined like a command, verified before each start:

      notes:
        pack: notes                                      # an installed pack

A server's name becomes the first part of its tools' capability names (`time.get_current_time`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stockade.core import yamlfile
from stockade.core.config import parse_size
from stockade.core.errors import ConfigError
from stockade.sandbox.longlived import check_bind
from stockade.vault.refs import names_in

SERVER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
# Headers the transport sets itself: an owner's value would break or confuse the session.
RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "accept", "connection",
                              "transfer-encoding", "mcp-session-id", "mcp-protocol-version", "last-event-id"})
FILE_NAME = "upstream.yaml"


class FsEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    mode: Literal["ro", "rw"] = "ro"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        why = check_bind(v)
        if why is not None:
            raise ValueError(f"{v}: {why}")
        return v


def loopback_url_problem(url: str) -> str | None:
    """Pure: why `url` is not a Streamable HTTP endpoint on this machine's loopback (None if it is).

    Only loopback: the gateway itself makes the connection, unconfined, so a remote endpoint would
    give the gateway reach the owner never granted through an egress allowlist."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        return f"not a URL ({e})"
    if u.scheme not in ("http", "https") or not u.hostname or any(c in url for c in "\0\r\n\t "):
        return "must be an http:// or https:// URL"
    if u.username is not None or u.password is not None:
        return "credentials belong in headers (${secret:NAME}), not in the URL"
    if u.fragment:
        return "a URL with a #fragment"
    if port == 0:
        return "port 0"
    if u.hostname == "localhost":
        return None
    try:
        if ipaddress.ip_address(u.hostname).is_loopback:
            return None
    except ValueError:
        pass
    return "the host must be a loopback address (127.0.0.0/8, ::1, localhost)"


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str | None = Field(None, min_length=2, max_length=4096)
    url: str | None = Field(None, min_length=8, max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict)
    pack: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]{0,63}$")
    args: list[str] = Field(default_factory=list, max_length=256)
    env: dict[str, str] = Field(default_factory=dict)
    egress: list[str] = Field(default_factory=list, max_length=256)
    filesystem: list[FsEntry] = Field(default_factory=list, max_length=64)
    instances: Literal["per-agent", "shared"] = "per-agent"
    timeout: float = Field(60.0, gt=0, le=3600)
    max_output_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    memory: int = Field(512 * 1024 * 1024, ge=16 * 1024 * 1024)
    pids: int = Field(128, ge=4, le=65536)
    cpu: float = Field(1.0, gt=0, le=1024)
    startup_timeout: float = Field(30.0, gt=0, le=600)

    @field_validator("max_output_bytes", "memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size(v)

    @field_validator("command")
    @classmethod
    def _command(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v):
            raise ValueError("command must be an absolute path")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        why = loopback_url_problem(v) if v is not None else None
        if why is not None:
            raise ValueError(f"url {v!r}: {why}")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not HEADER_NAME.match(k) or k.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {k!r}: not a header name the owner may set")
            if any(c in val for c in "\0\r\n") or len(val) > 8192:
                raise ValueError(f"header {k!r}: values are one line of text, at most 8192 characters")
        return v

    @model_validator(mode="after")
    def _kind(self) -> ServerConfig:
        """A server is either a command stockade runs confined, or a URL of one already running:
        options of the other kind would be promises nothing keeps, so they are refused."""
        if sum(x is not None for x in (self.command, self.url, self.pack)) != 1:
            raise ValueError("give one of command (a server stockade runs), url (one already running) or "
                             "pack (a signed pack's MCP server)")
        if self.url is not None:
            extra = [f for f in ("args", "env", "egress", "filesystem") if getattr(self, f)]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for a server stockade runs (command), not a url")
        elif self.headers:
            raise ValueError("headers: only for a url server")
        if self.pack is not None and (self.args or self.egress):
            raise ValueError("args, egress: a pack's server runs its signed entry with the egress its pack.yaml "
                             "asks for (which the agent's policy must also allow)")
        return self

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        if any("\0" in a or len(a) > 8192 for a in v):
            raise ValueError("arguments must be text without NUL, at most 8192 characters")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not ENV_NAME.match(k) or "\0" in val or len(val) > 65536:
                raise ValueError(f"env {k!r}: names are [A-Za-z_][A-Za-z0-9_]*, values text without NUL")
        return v

    @property
    def is_http(self) -> bool:
        return self.url is not None

    def given(self) -> dict[str, str]:
        """What the server is given at start, secrets unresolved: env (command) or headers (url)."""
        return self.headers if self.is_http else self.env

    def secret_names(self) -> list[str]:
        """The vault secrets this server is given at start (`${secret:NAME}` in env or header values)."""
        return sorted({n for val in self.given().values() for n in names_in(val)})


class UpstreamFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    servers: dict[str, ServerConfig] = Field(default_factory=dict)

    @field_validator("servers")
    @classmethod
    def _names(cls, v: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in v:
            if not SERVER_NAME.match(name):
                raise ValueError(f"server name {name!r}: lower-case letters, digits and _ (start with a letter)")
        return v


def parse(text: str, fname: str = FILE_NAME) -> dict[str, ServerConfig]:
    """Pure: upstream.yaml text -> servers by name, or ConfigError with file:line."""
    data, lines = yamlfile.loads(text, fname)
    try:
        return UpstreamFile.model_validate(data or {}).servers
    except ValidationError as e:
        raise ConfigError(yamlfile.pydantic_errors(e, fname, lines)) from None


def render(servers: dict[str, ServerConfig]) -> str:
    """Pure: servers -> upstream.yaml text (what `stockade upstream add/remove` writes)."""
    out = {"servers": {n: s.model_dump(mode="json", exclude_defaults=True) for n, s in sorted(servers.items())}}
    for n, s in servers.items():
        key = "url" if s.is_http else "pack" if s.pack else "command"
        out["servers"][n] = {key: getattr(s, key), **out["servers"][n]}
    return "# MCP servers stockade fronts (docs/upstream.md); `stockade upstream add|remove` edits this.\n" + \
        yaml.safe_dump(out, sort_keys=False, default_flow_style=False)


def path(home: Any) -> Path:
    return Path(home.root) / FILE_NAME


def load(home: Any) -> dict[str, ServerConfig]:
    p = path(home)
    if not p.exists():
        return {}
    return parse(p.read_text(encoding="utf-8"), str(p))


def runtime_dirs(command: str) -> list[str]:
    """Host directories a command needs beyond /usr and /bin: its virtualenv and the Python the
    venv was made from, or the directory above its `bin/` (what `upstream add` offers read-only)."""
    out: list[str] = []
    exe = Path(command)
    targets = [exe]
    try:
        with open(exe, "rb") as f:
            head = f.read(256)
        if head.startswith(b"#!"):
            interp = head[2:].split(b"\n", 1)[0].split()
            if interp:
                targets.append(Path(interp[0].decode(errors="replace")))
    except OSError:
        pass
    for t in targets:
        if not t.is_absolute() or check_bind(str(t.parent)) is not None and not str(t).startswith("/tmp/"):
            continue
        top = t.parent.parent
        if (top / "pyvenv.cfg").exists():
            out.append(str(top))
            home_line = [ln for ln in (top / "pyvenv.cfg").read_text().splitlines() if ln.startswith("home")]
            if home_line:
                base = os.path.dirname(home_line[0].split("=", 1)[1].strip().rstrip("/"))
                if check_bind(base) is None:
                    out.append(base)
        elif t.parent.name == "bin":
            out.append(str(top))
    return sorted(set(out))
