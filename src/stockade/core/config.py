"""`stockade.yaml`: the owner's configuration, validated at start with file:line errors.

Each part owns one section. Unknown keys are errors (a typo must not silently keep a default).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stockade.core import yamlfile
from stockade.core.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(v: Any) -> float:
    """`30`, `30s`, `5m`, `24h`, `7d` -> seconds."""
    if isinstance(v, bool):
        raise ValueError("expected a duration like 30s, 5m, 24h")
    if isinstance(v, int | float):
        if v < 0:
            raise ValueError("duration must not be negative")
        return float(v)
    if isinstance(v, str) and (m := _DURATION.match(v)):
        return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("expected a duration like 30s, 5m, 24h")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_MULT = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
         "T": 1000**4, "TB": 1000**4, "KI": 1024, "KIB": 1024, "MI": 1024**2, "MIB": 1024**2,
         "GI": 1024**3, "GIB": 1024**3, "TI": 1024**4, "TIB": 1024**4}


def parse_size(v: Any) -> int:
    """`512MiB`, `1GB`, `1048576` -> bytes (ValueError otherwise)."""
    if isinstance(v, bool):
        raise ValueError("expected a size like 512MiB")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("size must not be negative")
        return v
    if isinstance(v, float):
        if v < 0 or v != v:
            raise ValueError("size must not be negative")
        return int(v)
    if isinstance(v, str) and (m := _SIZE.match(v)):
        return int(float(m.group(1)) * _MULT[(m.group(2) or "").upper()])
    raise ValueError(f"expected a size like 512MiB, got {v!r}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewayConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7700, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    allowed_origins: list[str] = []  # extra Origins besides localhost (e.g. an SSH-tunnel name)
    # Failed authentication per source address (edge.authlimit): a burst, then one try per refill.
    auth_failure_burst: int = Field(10, ge=1, le=10_000)
    auth_failure_refill_seconds: float = Field(5.0, gt=0, le=86_400)


class DashboardConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7800, ge=0, le=65535)
    session_minutes: int = Field(720, ge=1)


class SyslogForwardConfig(_Section):
    """RFC 5425 (syslog over TLS) to a SIEM; the record as JSON in an RFC 5424 message."""

    host: str
    port: int = Field(6514, ge=1, le=65535)
    ca_file: str                                  # the CA that signed the receiver's certificate
    server_name: str | None = None                # certificate name to check (default: host)
    cert_file: str | None = None                  # client certificate, if the receiver asks for one
    key_file: str | None = None
    facility: int = Field(13, ge=0, le=23)        # 13: log audit
    app_name: str = Field("stockade", min_length=1, max_length=48)
    max_batch: int = Field(2000, ge=1, le=100_000)
    connect_timeout: float = Field(10.0, gt=0)


class JsonlForwardConfig(_Section):
    """A rotating JSONL file (one record per line) for log shippers."""

    dir: str                                      # relative paths are under the data home
    max_bytes: int = Field(100 << 20, ge=4096)
    keep: int = Field(10, ge=1)


class AuditForwardConfig(_Section):
    syslog: SyslogForwardConfig | None = None
    jsonl: JsonlForwardConfig | None = None
    lag_alert_records: int = Field(10_000, ge=1)  # a sink this far behind the log is a health alert
    lag_alert_seconds: float = Field(300.0, gt=0)  # ... or whose oldest unsent record is this old
    poll_seconds: float = Field(0.2, gt=0)
    retry_seconds: float = Field(2.0, gt=0)


class AuditConfig(_Section):
    checkpoint_every: int = Field(1000, ge=1)
    retention_days: int = Field(90, ge=1)
    fail_mode: Literal["buffer", "halt"] = "buffer"
    buffer_records: int = Field(10_000, ge=1)
    retry_seconds: float = Field(30.0, gt=0)
    agent_budget_bytes: int = Field(64 << 20, ge=4096)    # audit bytes one agent may cause per window
    agent_budget_seconds: float = Field(60.0, gt=0)
    reserve_bytes: int = Field(4 << 20, ge=0)             # preallocated: records stay durable on a full disk
    forward: AuditForwardConfig | None = None              # streaming to a SIEM / log shipper (docs/audit.md)


class ApprovalsConfig(_Section):
    ttl: float = 24 * 3600
    hold_seconds: float = 120

    @field_validator("ttl", "hold_seconds", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)


class SandboxConfig(_Section):
    host_uid: int = Field(100_000, ge=1000)   # first host uid of the range agents map to
    call_timeout: float = 30.0
    max_output_bytes: int = Field(1024 * 1024, ge=1024)
    # the group under each hierarchy that holds one group per agent
    cgroup_parent: str = Field("stockade", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
    pool: bool = True    # pre-armed sandboxes per (agent, profile), docs/sandbox.md "Pre-armed pool"

    @field_validator("call_timeout", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)


class VaultConfig(_Section):
    pass


class StateConfig(_Section):
    """Per-agent quotas of agent state (`state.*`, docs/state.md); read once at start."""

    max_keys: int = Field(1000, ge=1, le=1_000_000)           # live keys one agent may hold
    max_bytes: int = Field(8 << 20, ge=1024, le=1 << 34)       # keys + canonical values, per agent
    max_value_bytes: int = Field(64 << 10, ge=64, le=1 << 20)  # one value, canonical JSON

    @field_validator("max_bytes", "max_value_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size(v)


class PartsConfig(_Section):
    """Parts the owner may switch off (`parts: {egress: off}`). Audit and policy are not here:
    without them every call would be allowed or go unrecorded, so they always run."""

    sandbox: bool = True
    egress: bool = True
    vault: bool = True
    approvals: bool = True
    supervision: bool = True
    packs: bool = True
    perimeter: bool = True

    def off(self) -> frozenset[str]:
        return frozenset(name for name, on in self.model_dump().items() if not on)


class InstallConfig(_Section):
    # true: the gateway starts only from a signed release that verifies (docs/supply-chain.md);
    # false (default): a development install without a manifest starts with a warning.
    require_verified: bool = False


class SecurityConfig(_Section):
    """What the dashboard publishes at /.well-known/security.txt (RFC 9116)."""

    contact: str | None = Field(None, pattern=r"^(mailto:|https://)\S+$")   # this deployment's contact
    advisories: str | None = Field(None, pattern=r"^https://\S+$")  # the project's advisory form, if published
    languages: str = "en"
    expires_days: int = Field(180, ge=1, le=365)


class Config(_Section):
    version: Literal[1] = 1
    gateway: GatewayConfig = GatewayConfig()
    dashboard: DashboardConfig = DashboardConfig()
    audit: AuditConfig = AuditConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    sandbox: SandboxConfig = SandboxConfig()
    vault: VaultConfig = VaultConfig()
    state: StateConfig = StateConfig()
    parts: PartsConfig = PartsConfig()
    install: InstallConfig = InstallConfig()
    security: SecurityConfig = SecurityConfig()
    webhook: str | None = None
    # Validated by stockade.perimeter (its own model), kept raw here so the gateway does not
    # depend on the perimeter part.
    perimeter: dict[str, Any] = {}
    # Validated by stockade.egress (its own model: resolver, subnet, refresh).
    egress: dict[str, Any] = {}


DEFAULT_YAML = """\
# stockade configuration. Every key is optional; shown here with its default.
version: 1
gateway:
  host: 127.0.0.1        # binding anything else needs `serve --public` and prints a warning
  port: 7700
dashboard:
  host: 127.0.0.1
  port: 7800
audit:
  checkpoint_every: 1000 # records between signed checkpoints
  retention_days: 90
  fail_mode: buffer      # buffer (ring buffer on disk full) | halt (refuse calls at once)
approvals:
  ttl: 24h
  hold_seconds: 120
sandbox:
  call_timeout: 30s
"""


def load_config(path: Path) -> Config:
    """Load and validate; raise ConfigError with file:line messages."""
    if not path.exists():
        return Config()
    data, lines = yamlfile.load(path)
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: expected a mapping at the top level"])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(yamlfile.pydantic_errors(e, str(path), lines)) from None
