"""The `perimeter:` section of stockade.yaml, validated by this part's own pydantic model.

config.py keeps the section raw so the gateway never depends on the perimeter; errors here are
reported as `file:line` like every other owner file.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stockade.core import yamlfile
from stockade.core.errors import ConfigError
from stockade.perimeter.codec import Port, parse_port

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _b64(v: str, what: str, min_len: int, exact: bool = False) -> bytes:
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if (exact and len(raw) != min_len) or len(raw) < min_len:
        raise ValueError(f"{what} must decode to {'exactly' if exact else 'at least'} {min_len} bytes")
    return raw


class Stanza(BaseModel):
    """One client (one owner device): its keys and what it may open."""

    model_config = ConfigDict(extra="forbid")
    name: str
    key_base64: str | None = None        # fwknop KEY_BASE64 (Rijndael key)
    hmac_key_base64: str | None = None   # fwknop HMAC_KEY_BASE64 (HMAC-SHA256 key)
    native_key: str | None = None        # base64 of 32 bytes (native profile)
    open_ports: list[str] = ["tcp/22"]
    max_grant_seconds: int = Field(0, ge=0, le=86400)  # cap for a client-requested grant; 0: none
    allow_source_ip: bool = False        # accept 0.0.0.0 ("use my source address") requests

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("name must be 1-64 of A-Z a-z 0-9 _ . - (starting alphanumeric)")
        return v

    @field_validator("open_ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("open_ports must list at least one proto/port")
        return [str(parse_port(p.strip().lower() if isinstance(p, str) else p)) for p in v]

    @field_validator("key_base64")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None:
            _b64(v, "key_base64", 16)
        return v

    @field_validator("hmac_key_base64")
    @classmethod
    def _hkey(cls, v: str | None) -> str | None:
        if v is not None:
            _b64(v, "hmac_key_base64", 32)
        return v

    @field_validator("native_key")
    @classmethod
    def _nkey(cls, v: str | None) -> str | None:
        if v is not None:
            _b64(v, "native_key", 32, exact=True)
        return v

    @model_validator(mode="after")
    def _keys(self) -> Stanza:
        if (self.key_base64 is None) != (self.hmac_key_base64 is None):
            raise ValueError("key_base64 and hmac_key_base64 go together (HMAC is mandatory)")
        if self.key_base64 is None and self.native_key is None:
            raise ValueError("a stanza needs native_key and/or key_base64 + hmac_key_base64")
        return self

    @property
    def ports(self) -> frozenset[Port]:
        return frozenset(parse_port(p) for p in self.open_ports)

    def fwknop_keys(self) -> tuple[bytes, bytes] | None:
        if self.key_base64 is None or self.hmac_key_base64 is None:
            return None
        return base64.b64decode(self.key_base64), base64.b64decode(self.hmac_key_base64)

    def native_secret(self) -> bytes | None:
        return base64.b64decode(self.native_key) if self.native_key else None


class PerimeterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int = Field(62201, ge=1, le=65535)
    listen: str = "0.0.0.0"  # noqa: S104 - the SPA port must be reachable from outside
    grant_seconds: int = Field(30, ge=1, le=86400)
    max_skew_seconds: int = Field(120, ge=1, le=600)
    rate_per_source: float = Field(20.0, gt=0)    # packets/s one address may make us verify
    rate_total: float = Field(5000.0, gt=0)       # packets/s verified overall
    stanzas: list[Stanza] = []

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @model_validator(mode="after")
    def _unique(self) -> PerimeterConfig:
        names = [s.name for s in self.stanzas]
        if len(set(names)) != len(names):
            raise ValueError("stanza names must be unique")
        return self


def validate(raw: Any, fname: str = "stockade.yaml", lines: yamlfile.Lines | None = None) -> PerimeterConfig:
    """Validate the raw `perimeter:` value; ConfigError with file:line messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{fname}:{yamlfile.line_of(lines or {}, ('perimeter',))}: perimeter: expected a mapping"])
    try:
        return PerimeterConfig.model_validate(raw)
    except ValidationError as e:
        msgs = yamlfile.pydantic_errors(e, fname, lines or {}, prefix=("perimeter",))
        raise ConfigError([m.replace(": ", ": perimeter.", 1) if ": " in m else m for m in msgs]) from None


def load(path: Path) -> PerimeterConfig:
    """Read stockade.yaml and validate its perimeter section."""
    if not path.exists():
        return PerimeterConfig()
    data, lines = yamlfile.load(path)
    if data is None:
        return PerimeterConfig()
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: expected a mapping at the top level"])
    return validate(data.get("perimeter"), str(path), lines)
