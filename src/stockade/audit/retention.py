"""Which day files retention may delete: a pure decision on a clock it does not take on trust.

Why: the wall clock decides what history exists. A clock 100 days ahead for one restart must not
delete 100 days of records. Pruning therefore runs on the *log's* time: the timestamp of the last
record written before this run, plus the time the machine has been running since then (a
boot-time clock, which no one sets), and never on a wall clock ahead of that. A long downtime
looks the same as a jump ahead and is treated the same (pruning waits for the next run);
the disagreement is reported either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.audit.record import day_of

DAY_US = 86_400_000_000
SKEW_TOLERANCE_US = 3600 * 1_000_000     # beyond this, wall and log time disagree: say so


@dataclass(frozen=True)
class Anchor:
    """The log's own time when the writer opened: its last record's ts and the boot clock then."""

    ts_us: int
    boot_s: float


@dataclass(frozen=True)
class PrunePlan:
    trusted_us: int          # the time pruning uses: min(wall, anchor + time since the anchor)
    skew_us: int             # wall minus the log's time (> 0: the wall clock is ahead)
    cutoff: str              # day files before this UTC day are past retention
    files: tuple[str, ...]   # to prune, oldest first

    @property
    def clock_disagrees(self) -> bool:
        return abs(self.skew_us) > SKEW_TOLERANCE_US


def trusted_now(wall_us: int, anchor: Anchor, boot_now_s: float) -> tuple[int, int]:
    """(the time pruning may use, wall minus the log's time)."""
    log_time = anchor.ts_us + int(max(boot_now_s - anchor.boot_s, 0.0) * 1_000_000)
    return min(wall_us, log_time), wall_us - log_time


def plan(day_files: list[str], head_file: str | None, wall_us: int, anchor: Anchor, boot_now_s: float,
         retention_days: int) -> PrunePlan:
    """The day files past retention on the trusted clock, never the head's file or a later one."""
    now, skew = trusted_now(wall_us, anchor, boot_now_s)
    cutoff = day_of(now - retention_days * DAY_US)
    today = day_of(now)
    keep_from = min(today, head_file[:10]) if head_file else today
    files = tuple(n for n in sorted(day_files) if n[:10] < cutoff and n[:10] < keep_from and n != head_file)
    return PrunePlan(now, skew, cutoff, files)
