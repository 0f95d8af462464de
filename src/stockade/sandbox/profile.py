"""Pure parsing of the policy's `sandbox:` section (docs/design.md "Policy") into a `Profile`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from stockade.core.config import parse_size
from stockade.sandbox import Profile

_RATE = re.compile(r"^\s*(.+?)\s*/\s*s\s*$", re.IGNORECASE)


def parse_rate(v: Any) -> int:
    """`50MB/s` -> bytes per second."""
    if isinstance(v, str) and (m := _RATE.match(v)):
        return parse_size(m.group(1))
    return parse_size(v)


def from_policy(d: dict[str, Any] | None, base: Profile) -> Profile:
    """Merge a policy `sandbox:` mapping onto `base`; raises ValueError on a bad value."""
    if not d:
        return base
    if not isinstance(d, dict):
        raise ValueError("sandbox profile must be a mapping")
    p = base
    if "cpu" in d:
        cpu = d["cpu"]
        if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not 0.01 <= cpu <= 1024:
            raise ValueError("cpu must be a number of cores between 0.01 and 1024")
        p = replace(p, cpu=float(cpu))
    if "memory" in d:
        mem = parse_size(d["memory"])
        if mem < 4 * 1024 * 1024:
            raise ValueError("memory must be at least 4MiB")
        p = replace(p, memory=mem)
    if "pids" in d:
        pids = d["pids"]
        if isinstance(pids, bool) or not isinstance(pids, int) or not 2 <= pids <= 1_000_000:
            raise ValueError("pids must be an integer between 2 and 1000000")
        p = replace(p, pids=pids)
    if "io" in d:
        io = d["io"]
        if not isinstance(io, dict):
            raise ValueError("io must be a mapping {read, write}")
        if "read" in io:
            p = replace(p, io_read=max(1, parse_rate(io["read"])))
        if "write" in io:
            p = replace(p, io_write=max(1, parse_rate(io["write"])))
    if "tmpfs" in d:
        p = replace(p, tmpfs=parse_size(d["tmpfs"]))
    if "seccomp" in d:
        if d["seccomp"] not in ("default", "strict"):
            raise ValueError("seccomp must be default or strict")
        p = replace(p, seccomp=d["seccomp"])
    if "egress" in d:
        eg = d["egress"]
        if not isinstance(eg, list) or not all(isinstance(x, str) for x in eg):
            raise ValueError("egress must be a list of host:port strings")
        p = replace(p, egress=tuple(eg))
    if "timeout" in d:
        t = d["timeout"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 86400:
            raise ValueError("timeout must be seconds between 0 and 86400")
        p = replace(p, timeout=float(t))
    return p


def resolve(spec: Mapping[str, Any] | None, base: Profile) -> Profile:
    """The agent's profile from the policy's `sandbox:` mapping for it (`PolicyEngine.sandbox_profile`),
    over `base`. One shape in: the mapping, or None when the policy says nothing."""
    return from_policy(dict(spec) if spec else None, base)
