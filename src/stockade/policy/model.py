"""The policy file format (docs/design.md "Policy") and its loader: YAML text -> validated rules.

Everything an owner can get wrong is refused here, once, with `file:line` (unknown keys, wrong
types, bad tiers, invalid or catastrophic regexes, unknown capabilities, duplicate ids), so the
evaluator never parses anything per call.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stockade.core import yamlfile
from stockade.core.config import parse_duration
from stockade.core.encoding import canonical_json
from stockade.core.errors import ConfigError
from stockade.core.types import TIER_ORDER, TierName
from stockade.core.types import TIERS as TIERS  # re-exported: the engine and its tests index tiers by rank
from stockade.policy.conditions import Cond, compile_when
from stockade.policy.facts import DEFAULT_FACTS, Facts

RANK = TIER_ORDER
AUTONOMOUS, NOTIFY, APPROVAL, BLOCKED = range(4)
LAYERS = ("system", "org", "agent")

PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$")
MAX_RATE = 100_000
MAX_WINDOW = 31 * 86400.0
Tier = TierName
_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$")
_RATE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?/s\s*$")
_EGRESS = re.compile(r"^[A-Za-z0-9.\-:\[\]/*]+:\d{1,5}$")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RateLimitModel(_M):
    max: int = Field(ge=1, le=MAX_RATE)
    window: float
    on_exceed: Tier = "blocked"

    @field_validator("window", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        d = parse_duration(v)
        if not 0 < d <= MAX_WINDOW:
            raise ValueError("window must be more than 0 and at most 31d")
        return d


class RuleModel(_M):
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
    capability: str
    tier: Tier
    when: dict[str, Any] | None = None
    reason: str | None = Field(None, max_length=500)
    rate_limit: RateLimitModel | None = None

    @field_validator("capability")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if not PATTERN.match(v):
            raise ValueError('expected an exact name like "filesystem.read", "category.*", "a.b.*" or "*"')
        return v


class IoModel(_M):
    read: str | None = None
    write: str | None = None

    @field_validator("read", "write")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None and not _RATE.match(v):
            raise ValueError("expected a rate like 50MB/s")
        return v


class SandboxModel(_M):
    model_config = ConfigDict(extra="forbid", strict=False)
    cpu: float | None = Field(None, ge=0.01, le=1024)
    memory: str | int | None = None
    pids: int | None = Field(None, ge=2, le=1_000_000)
    io: IoModel | None = None
    tmpfs: str | int | None = None
    seccomp: Literal["default", "strict"] | None = None
    egress: list[str] | None = None
    timeout: float | None = None          # per-call wall-clock limit, seconds (sandbox part)
    workspace: str | None = Field(None, max_length=4096)   # the agent's /workspace on the host (docs/sandbox.md)
    workspace_owner: str | int | None = None   # the account that reads and edits the agent's work (ACLs)

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or v.rstrip("/") == "" or "\x00" in v
                              or ".." in v.split("/")):
            raise ValueError("workspace must be an absolute path other than / (no '..')")
        return v

    @field_validator("workspace_owner")
    @classmethod
    def _owner(cls, v: str | int | None) -> str | int | None:
        if isinstance(v, bool) or (isinstance(v, int) and not 1 <= v < 2**31) or \
                (isinstance(v, str) and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", v)):
            raise ValueError("workspace_owner must be a user name or a uid other than 0")
        return v

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float | None:
        if v is None:
            return None
        d = parse_duration(v)
        if not 0 < d <= 86400:
            raise ValueError("timeout must be more than 0 and at most 24h")
        return d

    @field_validator("memory", "tmpfs")
    @classmethod
    def _size(cls, v: str | int | None) -> str | int | None:
        if isinstance(v, bool) or (isinstance(v, str) and not _SIZE.match(v)) or (isinstance(v, int) and v < 0):
            raise ValueError("expected a size like 512MiB")
        return v

    @field_validator("egress")
    @classmethod
    def _egress(cls, v: list[str] | None) -> list[str] | None:
        for x in v or []:
            if not _EGRESS.match(x):
                raise ValueError(f"{x!r}: expected host:port or cidr:port")
        return v


class FileModel(_M):
    version: Literal[1]
    default: Tier | None = None
    rules: list[Any] = []                # each validated on its own, so every bad rule is reported
    sandbox: SandboxModel | None = None


@dataclass(frozen=True, eq=False)
class Rule:
    """One compiled rule. `key` names its rate-limit counters (stable across edits when `id` is set)."""

    layer: str
    pattern: str
    tier: int
    cond: Cond | None
    when: dict[str, Any] | None
    rule_id: str | None
    reason: str | None
    rate_max: int | None
    rate_window: float | None
    rate_on_exceed: int | None
    file: str
    line: int
    key: str
    sort_key: tuple[Any, ...] = field(repr=False)

    @property
    def label(self) -> str:
        return self.rule_id or f"{self.file}:{self.line}"

    @property
    def kind(self) -> str:
        return "star" if self.pattern == "*" else "prefix" if self.pattern.endswith(".*") else "exact"

    def specificity(self) -> tuple[int, int]:
        if self.pattern == "*":
            return (0, 0)
        if self.pattern.endswith(".*"):
            return (1, self.pattern.count("."))
        return (2, 0)

    def covers(self, capability: str) -> bool:
        if self.pattern == "*":
            return True
        if self.pattern.endswith(".*"):
            return capability.startswith(self.pattern[:-1])
        return capability == self.pattern

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.label, "layer": self.layer, "capability": self.pattern,
                               "tier": TIERS[self.tier], "file": self.file, "line": self.line}
        if self.rule_id:
            out["id"] = self.rule_id
        if self.when:
            out["when"] = self.when
        if self.reason:
            out["reason"] = self.reason
        if self.rate_max is not None:
            out["rate_limit"] = {"max": self.rate_max, "window": self.rate_window,
                                 "on_exceed": TIERS[self.rate_on_exceed or BLOCKED]}
        return out


@dataclass(frozen=True)
class PolicyFile:
    layer: str
    file: str
    default: int | None
    rules: tuple[Rule, ...]
    sandbox: dict[str, Any]
    digest: str


def _canonical(obj: Any) -> str:
    return canonical_json(obj, ascii=True, allow_nan=True, default=str)


def parse_policy(text: str, fname: str, layer: str, *, ctx: dict[str, str] | None = None,
                 known: Callable[[str], bool] | None = None, facts: Facts = DEFAULT_FACTS) -> PolicyFile:
    """Pure: YAML text -> PolicyFile, or ConfigError listing every problem with file:line.

    `known(name)` says whether an exact capability name exists; when given, an unknown name is
    refused (docs/design.md "Policy": typos must not silently leave a capability unpoliced).
    """
    data, lines = yamlfile.loads(text, fname)
    return parse_data(data, lines, fname, layer, ctx=ctx, known=known,
                      digest=hashlib.sha256(text.encode()).hexdigest(), facts=facts)


def parse_data(data: Any, lines: yamlfile.Lines, fname: str, layer: str, *, ctx: dict[str, str] | None = None,
               known: Callable[[str], bool] | None = None, digest: str | None = None,
               facts: Facts = DEFAULT_FACTS) -> PolicyFile:
    """Pure: already-parsed data (+ its line map) -> PolicyFile, or ConfigError. `facts` are the
    live lookups conditions consult (capability path scopes, the agents' egress reach)."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer}")
    if digest is None:
        digest = hashlib.sha256(_canonical(data).encode()).hexdigest()
    if data is None:
        raise ConfigError([f"{fname}:1: empty policy file (expected at least 'version: 1')"])
    if not isinstance(data, dict):
        raise ConfigError([f"{fname}:1: expected a mapping at the top level"])
    try:
        model = FileModel.model_validate(data)
    except ValidationError as e:
        raise ConfigError(yamlfile.pydantic_errors(e, fname, lines)) from None
    errors: list[str] = []
    rules: list[Rule] = []
    seen_ids: dict[str, int] = {}
    for i, raw in enumerate(model.rules):
        line = yamlfile.line_of(lines, ("rules", i))
        try:
            rm = RuleModel.model_validate(raw)
        except ValidationError as e:
            errors.extend(m.replace(": ", f": rules.{i}.", 1).replace(f"rules.{i}.(top level)", f"rules.{i}")
                          for m in yamlfile.pydantic_errors(e, fname, lines, ("rules", i)))
            continue
        if rm.id is not None:
            if rm.id in seen_ids:
                errors.append(f"{fname}:{line}: rules.{i}.id: duplicate id {rm.id!r} (first at line {seen_ids[rm.id]})")
            seen_ids.setdefault(rm.id, line)
        if known is not None and "*" not in rm.capability and not known(rm.capability):
            errors.append(f"{fname}:{yamlfile.line_of(lines, ('rules', i, 'capability'))}: rules.{i}.capability: "
                          f"unknown capability {rm.capability!r}")
        cond = None
        try:
            cond = compile_when(rm.when, ctx, f"rules.{i}.when", facts=facts,
                                permissive=RANK[rm.tier] < RANK["approval_required"])
        except ValueError as e:
            msg = str(e)
            parts = msg.split(":", 1)[0].split(".")
            loc = ("rules", i, "when", *parts[3:4])
            errors.append(f"{fname}:{yamlfile.line_of(lines, loc)}: {msg}")
        if isinstance(rm.when, dict) and "read_only_hint" in rm.when and rm.tier in ("autonomous", "blocked"):
            errors.append(f"{fname}:{yamlfile.line_of(lines, ('rules', i, 'tier'))}: rules.{i}.tier: a rule on "
                          "read_only_hint may be notify or approval_required: the hint is the upstream server's "
                          "claim, not enough to run without telling the owner nor evidence to block on "
                          "(name the tool to decide on it)")
        rate = rm.rate_limit
        if rate is not None and RANK[rate.on_exceed] <= RANK[rm.tier]:
            errors.append(f"{fname}:{yamlfile.line_of(lines, ('rules', i, 'rate_limit', 'on_exceed'))}: "
                          f"rules.{i}.rate_limit.on_exceed: must be more restrictive than the rule's tier "
                          f"{rm.tier!r} (escalation never loosens)")
        content = {k: raw.get(k) for k in ("capability", "tier", "when", "rate_limit")}
        key = f"{layer}:{rm.id}" if rm.id else \
            f"{layer}:{hashlib.sha256(_canonical(content).encode()).hexdigest()[:16]}"
        rules.append(Rule(
            layer=layer, pattern=rm.capability, tier=RANK[rm.tier], cond=cond, when=rm.when or None,
            rule_id=rm.id, reason=rm.reason, rate_max=rate.max if rate else None,
            rate_window=rate.window if rate else None, rate_on_exceed=RANK[rate.on_exceed] if rate else None,
            file=fname, line=line, key=key,
            sort_key=(rm.id or "", _canonical(content), rm.reason or "", line)))
    if errors:
        raise ConfigError(errors)
    sandbox = model.sandbox.model_dump(exclude_none=True) if model.sandbox else {}
    return PolicyFile(layer, fname, RANK[model.default] if model.default else None, tuple(rules), sandbox, digest)
