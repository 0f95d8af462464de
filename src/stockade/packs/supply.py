"""`stockade doctor --verify-install`: is the installed stockade exactly the signed release?

The check itself is `stockade.release.verify` (the install against the release manifest signed
with the pinned publisher key: stockade's own files, every dependency's, `.pyc` files, RECORDs,
versions). This module maps its report onto doctor's statuses: a development install (no signed
manifest) is `degraded` with `verified: false`, never a silent `ok`.
"""

from __future__ import annotations

from typing import Any

from stockade.packs.records import record_check
from stockade.release import keys
from stockade.release.verify import Install, check


def verify_install(inst: Install | None = None) -> dict[str, Any]:
    report = check(inst or Install.current(), keys.PUBLISHER_KEY)
    if report["status"] == "unverified":
        # Nothing is verified without a signed manifest; RECORDs and the lock still catch a changed,
        # missing or unpinned dependency (as doctor did before releases were signed).
        rec = record_check()
        for k in ("modified", "missing", "extra"):
            report[k] = sorted(set(report.get(k) or []) | set(rec[k]))
        report["version_mismatch"], report["unpinned"] = rec["version_mismatch"], rec["unpinned"]
        report["files_checked"] = rec["files_checked"]
        report["status"] = "critical" if rec["status"] == "critical" else "degraded"
    return report
