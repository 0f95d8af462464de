"""Perimeter hooks for the rest of stockade: its SQLite schema and `stockade doctor` checks.

The perimeter daemon itself is separate (`stockade perimeter serve`, root); the gateway only
reports whether it runs and whether sshd behind it is configured strongly.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

from stockade.core.errors import ConfigError
from stockade.perimeter import (
    replay,  # noqa: F401 - registers the replay table in db.SCHEMA
    sshd,
)


def _daemon_running(home: Any) -> bool:
    p = Path(home.run) / "perimeter.json"
    try:
        os.kill(int(json.loads(p.read_text())["pid"]), 0)
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _authorized_keys_files() -> list[Path]:
    out = []
    for pw in pwd.getpwall():
        if pw.pw_uid == 0 or pw.pw_uid >= 1000:
            p = Path(pw.pw_dir) / ".ssh" / "authorized_keys"
            if p.exists():
                out.append(p)
    return out


def doctor(home: Any) -> dict[str, dict[str, Any]]:
    """perimeter: configured and running; sshd: password auth, root login, key strength."""
    from stockade.perimeter.config import load

    checks: dict[str, dict[str, Any]] = {}
    try:
        cfg = load(Path(home.config_path))
        if not cfg.stanzas:
            checks["perimeter"] = {"status": "degraded", "detail": "no perimeter stanzas (stockade perimeter keygen)"}
        elif not _daemon_running(home):
            checks["perimeter"] = {"status": "degraded", "detail": "perimeter is not running "
                                   "(stockade perimeter serve, as root)"}
        else:
            checks["perimeter"] = {"status": "ok", "stanzas": len(cfg.stanzas)}
    except ConfigError as e:
        checks["perimeter"] = {"status": "critical", "errors": e.errors}
    try:
        res = subprocess.run(["/usr/sbin/sshd", "-T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        checks["sshd"] = {"status": "ok", "detail": "sshd not installed"}
        return checks
    if res.returncode != 0:
        checks["sshd"] = {"status": "degraded", "detail": "cannot read the sshd configuration: "
                          + (res.stderr.strip().splitlines() or ["sshd -T failed"])[0][:200]}
        return checks
    conf = sshd.parse_sshd_T(res.stdout)
    findings = sshd.config_findings(conf)
    host_pubs = [Path(k + ".pub") for k in conf.get("hostkey", [])]
    findings += sshd.key_findings([p for p in host_pubs if p.exists()])
    findings += sshd.key_findings(_authorized_keys_files())
    checks["sshd"] = {"status": "degraded", "warnings": findings} if findings else {"status": "ok"}
    return checks
