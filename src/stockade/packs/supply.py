"""`stockade doctor --verify-install`: is the installed stockade exactly the signed release?

The check itself is `stockade.release.verify` (the install against the release manifest signed
with the pinned publisher key: stockade's own files, every dependency's, `.pyc` files, RECORDs,
versions). This module maps its report onto doctor's statuses: a development install (no signed
manifest) is `degraded` with `verified: false`, never a silent `ok`.
"""

from __future__ import annotations

from typing import Any

from stockade.release import keys
from stockade.release.verify import Install, check


def verify_install(inst: Install | None = None) -> dict[str, Any]:
    report = check(inst or Install.current(), keys.PUBLISHER_KEY)
    if report["status"] == "unverified":
        report["status"] = "degraded"
    return report
