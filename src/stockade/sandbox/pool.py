"""The zygote's pool of pre-armed children (issue 16): which request a child may serve, how many.

A pooled child is armed for one *slot*: everything that shapes its layers (agent, host uid,
the call's and the agent's profile, binds, io devices, the exact network namespace and
workspace/trash inodes, the gateway's per-agent generation). It serves one request of that
slot only, and only once. The rules here are pure; the zygote applies them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

# Fields of a request that belong to the one call, not to the sandbox it runs in. Everything
# else in the envelope is part of the slot key: a child never serves a request whose envelope
# differs from the one it was armed for in anything but these.
PER_CALL = frozenset({"call_id", "capability", "trace", "args"})

PER_SLOT_MAX = 4          # children armed ahead for one (agent, profile)
TOTAL_MAX = 16            # across every slot
BUDGET_BYTES = 96 << 20   # memory charged to ready children (their cgroup leaves), all slots
IDLE_S = 30.0             # a slot unused this long is emptied and forgotten
WINDOW_S = 10.0           # demand (peak concurrent calls) is measured over this window
FAIL_BACKOFF_S = 10.0     # a slot whose child failed to arm is not refilled for this long
ARM_TIMEOUT_S = 10.0      # a child not ready this long after its clone is killed (counted as a failure)
QUIET_S = 0.05            # no arming while a call younger than this runs: the zygote is single-
                          # threaded, and a clone then would delay that call's exit report


def slot_key(req: dict[str, Any], ids: list[int]) -> str | None:
    """Pure: the slot a request belongs to, or None when it must run cold.

    Pack calls run cold (their handler and /pack bind are per definition). `ids` are the
    (dev, inode) numbers of the netns, workspace and trash the request names, so a namespace or
    directory re-created under the same path never matches a child armed on the old one."""
    if not req.get("pool") or req.get("handler") or (req.get("binds") or {}).get("pack"):
        return None
    fixed = {k: v for k, v in req.items() if k not in PER_CALL}
    return json.dumps([fixed, ids], sort_keys=True, separators=(",", ":"), default=str)


def identity(netns_fd: int, binds: dict[str, Any]) -> list[int] | None:
    """(dev, inode) of the request's netns fd and its workspace/trash dirs; None if one is missing."""
    if netns_fd < 0:
        return None
    try:
        st = os.fstat(netns_fd)
        out = [st.st_dev, st.st_ino]
        for name in ("workspace", "trash"):
            s = os.stat(str(binds[name]))
            out += [s.st_dev, s.st_ino]
    except (OSError, KeyError):
        return None
    return out


@dataclass
class Demand:
    """Per slot: when it was last asked for and how many of its calls ran at once lately."""

    last_use: float = 0.0
    inflight: int = 0
    peak: int = 0
    window_start: float = 0.0
    failed_at: float = -1e9

    def begin(self, now: float) -> None:
        self.last_use = now
        self.inflight += 1
        if now - self.window_start > WINDOW_S:
            self.window_start, self.peak = now, self.inflight
        self.peak = max(self.peak, self.inflight)

    def end(self) -> None:
        self.inflight = max(0, self.inflight - 1)


def target(d: Demand, now: float) -> int:
    """Pure: how many ready children the slot should hold. None for an idle slot; otherwise the
    recent peak of concurrent calls (at least one, at most PER_SLOT_MAX); none for a while after
    a child failed to arm (a broken layer must not be retried in a loop)."""
    if now - d.last_use > IDLE_S or now - d.failed_at < FAIL_BACKOFF_S:
        return 0
    peak = d.peak if now - d.window_start <= 2 * WINDOW_S else d.inflight
    return max(1, min(PER_SLOT_MAX, peak))


@dataclass
class Stats:
    """What health and `stockade status` show of the pool."""

    hits: int = 0
    misses: int = 0
    armed: int = 0
    discarded: int = 0        # killed unused: invalidated, idle, shutdown
    failures: int = 0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def view(self, ready: int, arming: int, slots: int, memory: int) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": ready, "arming": arming, "slots": slots, "memory_bytes": memory,
               "budget_bytes": BUDGET_BYTES, "max": TOTAL_MAX, "hits": self.hits, "misses": self.misses,
               "armed": self.armed, "discarded": self.discarded, "failures": self.failures}
        if self.last_error:
            out["last_error"] = self.last_error
        return out
