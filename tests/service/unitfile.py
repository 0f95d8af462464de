"""Read a systemd unit the way systemd starts it: its ExecStart argv and Environment (test helper)."""

from __future__ import annotations

import shlex
from pathlib import Path


def service_section(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def exec_start(path: Path) -> list[str]:
    return shlex.split(service_section(path)["ExecStart"][0])


def environment(path: Path) -> dict[str, str]:
    env = {}
    for assignment in service_section(path).get("Environment", []):
        for item in shlex.split(assignment):
            k, _, v = item.partition("=")
            env[k] = v
    return env
