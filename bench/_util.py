"""Helpers for benchmarks: percentiles and a result row in the docs/design.md "Benchmarks" shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Set by `stockade bench` on a terminal: told the name of each case as it finishes (progress).
on_row: Callable[[str], None] | None = None


def pct(samples_ns: list[int], q: float) -> float:
    s = sorted(samples_ns)
    if not s:
        return 0.0
    i = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[i] / 1000.0


def row(case: str, samples_ns: list[int], *, anchor: str | None = None,
        anchor_ns: list[int] | None = None, per_s: float | None = None, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"case": case, "p50_us": round(pct(samples_ns, 0.5), 2),
                         "p99_us": round(pct(samples_ns, 0.99), 2)}
    if per_s is not None:
        r["per_s"] = round(per_s, 1)
    if anchor and anchor_ns:
        a50 = pct(anchor_ns, 0.5)
        r.update(anchor=anchor, anchor_p50_us=round(a50, 2), anchor_p99_us=round(pct(anchor_ns, 0.99), 2),
                 ratio=round(r["p50_us"] / a50, 3) if a50 else None)
    r.update(extra)
    if on_row is not None:
        on_row(case)
    return r

