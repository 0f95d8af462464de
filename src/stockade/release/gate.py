"""The gateway's start check: the decision (pure) and the check of the running install.

    ok                      start
    unverified (dev)        start with a warning, or refuse if `install.require_verified: true`
    critical (mismatch)     refuse, unless the owner overrides it for this one start (audited)

Why a development install only warns by default: `make run` and `make test` run stockade from an
editable install of the work tree, which has no signed manifest by construction; refusing would
break the newcomer's first command. A signed release carries a marker file, so deleting its
manifest does not turn it into a "development install": that is a mismatch and refuses.
Deployments set `install.require_verified: true` so that only a verified release starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stockade.release import keys
from stockade.release.verify import Install, check


@dataclass(frozen=True)
class Gate:
    action: str                 # "start" | "warn" | "refuse" | "override"
    report: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.report["message"])


def decide(report: dict[str, Any], *, require_verified: bool, override: bool) -> Gate:
    status = report["status"]
    if status == "ok":
        return Gate("start", report)
    if status == "unverified" and not require_verified:
        return Gate("warn", report)
    return Gate("override" if override else "refuse", report)


def running_from(inst: Install, module_file: str) -> dict[str, Any] | None:
    """A critical report if stockade's code is not the verified install's (PYTHONPATH, a stray copy)."""
    here = Path(module_file).resolve()
    if inst.manifest_path.exists() and inst.purelib.resolve() not in here.parents:
        return {"status": "critical", "verified": False,
                "message": f"stockade runs from {here.parent}, not from the verified install at {inst.purelib}"}
    return None


def at_start(*, require_verified: bool, override: bool, key: Ed25519PublicKey = keys.PUBLISHER_KEY,
             inst: Install | None = None) -> Gate:
    inst = inst or Install.current()
    stray = running_from(inst, sys.modules["stockade"].__file__ or "")
    return decide(stray or check(inst, key), require_verified=require_verified, override=override)
