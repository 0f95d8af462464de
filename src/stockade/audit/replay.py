"""Policy replay: decide every recorded decision again with a candidate policy, offline.

The audit layer knows records, not policies: the caller passes a `Decider` (the CLI builds one
over the pure policy engine). This module picks the decisions out of the log, recovers their
arguments exactly or says why it cannot (never guesses), compares tiers and tallies the result.

Which records are decisions: call records (no `kind`) whose `phase` is `complete` or `decision`
(the `outcome` after a `decision` is the same call) and whose `decision.tier` is set (a call
refused before policy, e.g. invalid arguments or an unknown key, was never decided: counted as
`not_decided`).

Arguments: a call refused by policy keeps only `{sha256, bytes, prefix}` of its canonical JSON
(`gateway.costs.refused_args`). When the prefix is the whole text (not truncated) and its SHA-256
is the recorded one, the arguments are recovered exactly; otherwise the record is undecidable.
Stand-ins (`_unrecorded`: too deep, too large, non-finite...) and `_truncated` (over 256 KiB) are
undecidable too.

Rate limits depend on order: the decider's `first` returns None when the candidate policy's
verdict involves a rate-limited rule; those calls are decided again afterwards, in seq order, by
`in_order` at the call's recorded start time (`ts - duration_us`). Work is split into frame-aligned
chunks of the day files and run on every core (`run`); the in-order pass runs in the parent.

A pack's declared tier is a floor the pipeline applies over the policy: floors are learned from
the log (decisions with `layer: pack`) and applied to calls that would be loosened.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from stockade.audit.index import BadFrame, iter_records
from stockade.audit.record import FRAME, MAX_FRAME, jsonable
from stockade.audit.verify import day_files
from stockade.core.types import TIER_ORDER

Outcome = tuple[str, str | None, str]        # (tier, rule, layer)
_DIGEST_KEYS = frozenset({"sha256", "bytes", "prefix", "truncated"})
_REFUSED_ERRORS = frozenset({"PolicyDenied", "RateLimited"})


class Decider(Protocol):
    def first(self, agent: str, capability: str, args: dict[str, Any]) -> Outcome | None:
        """The candidate policy's decision, or None when it depends on rate-limit state."""

    def in_order(self, agent: str, capability: str, args: dict[str, Any], at: float) -> Outcome:
        """The decision at time `at` (seconds), counting the call against rate limits like the gateway."""


@dataclass(frozen=True)
class Filters:
    since_us: int | None = None
    until_us: int | None = None
    agent: str | None = None
    examples: int = 200            # changed/undecidable calls kept in full per category


# -- picking decisions out of records (pure) ------------------------------------------------------
class Call(NamedTuple):
    """One recorded decision (a tuple: millions are made in a replay, and pickled back from workers)."""

    seq: int
    ts: int
    agent: str
    capability: str
    call: str | None
    args: dict[str, Any] | None        # None: undecidable (`why` says why)
    why: str | None
    then: Outcome
    policy: str | None                 # the compiled policy version that decided then
    start_us: int


def decision_of(rec: dict[str, Any], f: Filters = Filters()) -> Call | str | None:
    """A recorded decision as a `Call`; "not_decided" for a call refused before policy; None for
    anything else (events, outcome records, filtered out)."""
    if "kind" in rec or rec.get("phase") not in ("complete", "decision"):
        return None
    ts, agent, cap = rec.get("ts"), rec.get("agent"), rec.get("capability")
    if type(ts) is not int or type(agent) is not str or type(cap) is not str:
        return None
    if (f.since_us is not None and ts < f.since_us) or (f.until_us is not None and ts >= f.until_us) \
            or (f.agent is not None and agent != f.agent):
        return None
    d = rec.get("decision")
    if not isinstance(d, dict) or type(d.get("tier")) is not str:
        return "not_decided"
    then: Outcome = (d["tier"], _text(d.get("rule")), _text(d.get("layer")) or "?")
    args, why = recover_args(rec)
    dur = rec.get("duration_us")
    start = ts - dur if type(dur) is int and 0 <= dur <= ts else ts
    s = rec.get("seq")
    return Call(s if type(s) is int else 0, ts, agent, cap, _text(rec.get("call")), args, why, then,
                _text(d.get("policy")), start)


def recover_args(rec: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The arguments the policy saw, exactly, or (None, why they cannot be known)."""
    args = rec.get("args")
    if not isinstance(args, dict):
        return None, "arguments not recorded as an object"
    if "_unrecorded" in args and "sha256" in args:
        return None, f"arguments kept only as a digest ({args.get('_unrecorded')})"
    if args.get("_truncated") is True and "sha256" in args:
        return None, "arguments over 256 KiB kept only as a digest"
    if _refused_by_policy(rec) and set(args) <= _DIGEST_KEYS and "sha256" in args:
        prefix = args.get("prefix")
        if args.get("truncated") or not isinstance(prefix, str):
            return None, "refused call: arguments kept only as a digest and a prefix"
        raw = prefix.encode("utf-8", "backslashreplace")
        if hashlib.sha256(raw).hexdigest() != args.get("sha256") or len(raw) != args.get("bytes"):
            return None, "refused call: the kept prefix does not match the digest"
        try:
            got = json.loads(prefix)
        except ValueError:
            return None, "refused call: the kept text is not JSON"
        if not isinstance(got, dict):
            return None, "refused call: the arguments were not an object"
        return got, None
    return args, None


def _refused_by_policy(rec: dict[str, Any]) -> bool:
    d, o = rec.get("decision"), rec.get("outcome")
    return (isinstance(d, dict) and d.get("tier") == "blocked" and isinstance(o, dict)
            and o.get("status") == "error" and o.get("error") in _REFUSED_ERRORS)


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def direction(then: str, now: str) -> str:
    """loosened | tightened | unchanged, by tier order (unknown tiers sort as blocked)."""
    a, b = TIER_ORDER.get(then, 3), TIER_ORDER.get(now, 3)
    return "unchanged" if a == b else "loosened" if b < a else "tightened"


# -- tallying (mergeable across workers) ------------------------------------------------------------
@dataclass
class Tally:
    records: int = 0
    decisions: int = 0
    not_decided: int = 0
    replayed: int = 0
    unchanged: int = 0
    undecidable: Counter[str] = field(default_factory=Counter)
    # (direction, capability, tier then, tier now) -> count
    changes: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"loosened": [], "tightened": [],
                                                                               "undecidable": []})
    floors: dict[str, tuple[str, str]] = field(default_factory=dict)    # capability -> (tier, rule)
    pending: list[Call] = field(default_factory=list)                 # rate-limited: decided in order
    bad: list[BadFrame] = field(default_factory=list)
    limit: int = 200

    def add(self, c: Call, now: Outcome) -> None:
        self.replayed += 1
        d = direction(c.then[0], now[0])
        if d == "unchanged":
            self.unchanged += 1
            return
        self.changes[(d, c.capability, c.then[0], now[0])] += 1
        ex = self.examples[d]
        if len(ex) < self.limit:
            ex.append(_example(c, now))

    def undecided(self, c: Call) -> None:
        assert c.why is not None
        self.undecidable[c.why] += 1
        ex = self.examples["undecidable"]
        if len(ex) < self.limit:
            ex.append({"seq": c.seq, "ts": c.ts, "agent": c.agent, "capability": c.capability, "call": c.call,
                       "then": _side(c.then, c.policy), "reason": c.why})

    def merge(self, o: Tally) -> None:
        for k in ("records", "decisions", "not_decided", "replayed", "unchanged"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.undecidable.update(o.undecidable)
        self.changes.update(o.changes)
        for k, ex in o.examples.items():
            self.examples[k].extend(ex[:max(self.limit - len(self.examples[k]), 0)])
        self.floors.update(o.floors)
        self.pending.extend(o.pending)
        self.bad.extend(o.bad)


def _side(o: Outcome, policy: str | None = None) -> dict[str, Any]:
    out = {"tier": o[0], "rule": o[1], "layer": o[2]}
    if policy:
        out["policy"] = policy
    return out


def _example(c: Call, now: Outcome) -> dict[str, Any]:
    return {"seq": c.seq, "ts": c.ts, "agent": c.agent, "capability": c.capability, "call": c.call,
            "then": _side(c.then, c.policy), "now": _side(now)}


_UNSET: Any = object()


def replay_records(recs: Iterator[dict[str, Any]], decider: Decider, f: Filters, t: Tally) -> None:
    """Decide every decision in `recs` again: rate-independent ones now, the rest into `t.pending`.

    The common record (a decided call, its arguments kept as they ran, no filter, tier unchanged)
    is counted without building a `Call`; everything else takes `decision_of`."""
    filtered = f.since_us is not None or f.until_us is not None or f.agent is not None
    first = decider.first
    for rec in recs:
        t.records += 1
        if "kind" in rec:
            continue
        phase = rec.get("phase")
        if phase != "complete" and phase != "decision":
            continue
        now: Any = _UNSET
        d, args = rec.get("decision"), rec.get("args")
        # Arguments without "sha256" are exactly what `recover_args` gives back (no digest stand-in).
        if (not filtered and type(d) is dict and type(args) is dict and "sha256" not in args
                and type(rec.get("agent")) is str and type(rec.get("capability")) is str
                and type(rec.get("ts")) is int and type(d.get("tier")) is str and d.get("layer") != "pack"):
            now = first(rec["agent"], rec["capability"], args)
            if now is not None and now[0] == d["tier"]:
                t.decisions += 1
                t.replayed += 1
                t.unchanged += 1
                continue
        c = decision_of(rec, f)
        if c is None:
            continue
        if isinstance(c, str):
            t.not_decided += 1
            continue
        t.decisions += 1
        if c.then[2] == "pack" and c.then[1] and c.then[1].startswith("pack:"):
            t.floors[c.capability] = (c.then[0], c.then[1])
        if c.args is None:
            t.undecided(c)
            continue
        if now is _UNSET:
            now = first(c.agent, c.capability, c.args)
        if now is None:
            t.pending.append(c)
        else:
            t.add(c, now)


def finish(t: Tally, decider: Decider) -> Tally:
    """The in-order pass over rate-limited calls, then the pack floors."""
    t.pending.sort(key=lambda c: c.seq)
    for c in t.pending:
        assert c.args is not None
        t.add(c, decider.in_order(c.agent, c.capability, c.args, c.start_us / 1e6))
    t.pending = []
    _apply_floors(t)
    return t


def _apply_floors(t: Tally) -> None:
    """A loosening under a pack's floor does not happen: the pipeline raises the tier to the floor."""
    for key, n in list(t.changes.items()):
        d, cap, then, now = key
        floor = t.floors.get(cap)
        if d != "loosened" or floor is None or TIER_ORDER.get(floor[0], 3) <= TIER_ORDER.get(now, 3):
            continue
        del t.changes[key]
        if direction(then, floor[0]) == "unchanged":
            t.unchanged += n
        else:
            t.changes[(d, cap, then, floor[0])] += n
    kept = []
    for ex in t.examples["loosened"]:
        floor = t.floors.get(ex["capability"])
        if floor is not None and TIER_ORDER.get(floor[0], 3) > TIER_ORDER.get(ex["now"]["tier"], 3):
            if direction(ex["then"]["tier"], floor[0]) == "unchanged":
                continue
            ex["now"] = {"tier": floor[0], "rule": floor[1], "layer": "pack"}
        kept.append(ex)
    t.examples["loosened"] = kept


# -- running over the day files, on every core ---------------------------------------------------
Chunk = tuple[str, int, int]          # (path, start offset, end offset): frame-aligned
_FACTORY: Callable[[], Decider] | None = None
_DECIDER: Decider | None = None


def chunks(files: list[Path], size: int = 8 << 20) -> list[Chunk]:
    """Frame-aligned pieces of about `size` bytes (the framing is walked, nothing is decoded)."""
    out: list[Chunk] = []
    for p in files:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        n, o, start = len(data), 0, 0
        while o + 4 <= n:
            ln = FRAME.unpack_from(data, o)[0]
            if ln == 0 or ln > MAX_FRAME or o + 4 + ln > n:
                break
            o += 4 + ln
            if o - start >= size:
                out.append((str(p), start, o))
                start = o
        out.append((str(p), start, n))       # the rest (iter_records names a broken framing)
    return out


def _work(chunk: Chunk, f: Filters) -> Tally:
    global _DECIDER
    if _DECIDER is None:
        assert _FACTORY is not None
        _DECIDER = _FACTORY()
    t = Tally(limit=f.examples)
    path, start, end = chunk
    replay_records((r for _o, _l, r in iter_records(Path(path), start, end, bad=t.bad)), _DECIDER, f, t)
    return t


def run(audit_dir: Path, factory: Callable[[], Decider], f: Filters = Filters(),
        workers: int | None = None, chunk_bytes: int = 8 << 20,
        progress: Callable[[int, int], None] | None = None) -> Tally:
    """Replay the whole log (day files overlapping the filters) on `workers` processes (all cores);
    `progress(done, total)` (bytes) is told after each chunk (the CLI's bar)."""
    global _FACTORY, _DECIDER
    files = day_files(audit_dir)
    if f.since_us is not None:
        first_day = _day(f.since_us - 86_400_000_000)
        files = [p for p in files if p.name[:10] >= first_day]
    if f.until_us is not None:
        last_day = _day(f.until_us + 86_400_000_000)
        files = [p for p in files if p.name[:10] <= last_day]
    parts = chunks(files, chunk_bytes)
    n = workers or min(os.cpu_count() or 1, max(len(parts), 1))
    total = Tally(limit=f.examples)
    _FACTORY, _DECIDER = factory, None
    try:
        if n <= 1 or len(parts) <= 1:
            _merge(total, parts, (_work(c, f) for c in parts), progress)
        else:
            ctx = multiprocessing.get_context("fork")     # the decider is built in each worker
            with ProcessPoolExecutor(n, mp_context=ctx) as ex:
                _merge(total, parts, ex.map(_work, parts, [f] * len(parts)), progress)
        return finish(total, factory())
    finally:
        _FACTORY, _DECIDER = None, None


def _merge(total: Tally, parts: list[Chunk], results: Iterable[Tally],
           progress: Callable[[int, int], None] | None) -> None:
    size, done = sum(c[2] - c[1] for c in parts), 0
    for c, t in zip(parts, results, strict=True):
        total.merge(t)
        done += c[2] - c[1]
        if progress is not None:
            progress(done, size)


def _day(ts_us: int) -> str:
    import time

    return time.strftime("%Y-%m-%d", time.gmtime(max(ts_us, 0) // 1_000_000))


def report(t: Tally) -> dict[str, Any]:
    """The result as JSON-ready data."""
    by: dict[str, list[dict[str, Any]]] = {"loosened": [], "tightened": []}
    for (d, cap, then, now), n in sorted(t.changes.items()):
        by[d].append({"capability": cap, "then": then, "now": now, "calls": n})
    loosened = sum(x["calls"] for x in by["loosened"])
    tightened = sum(x["calls"] for x in by["tightened"])
    return {"records": t.records, "decisions": t.decisions, "replayed": t.replayed, "unchanged": t.unchanged,
            "loosened": loosened, "tightened": tightened, "not_decided": t.not_decided,
            "undecidable": sum(t.undecidable.values()),
            "undecidable_reasons": dict(sorted(t.undecidable.items())),
            "changes": by, "examples": jsonable(t.examples), "pack_floors": {k: v[0] for k, v in t.floors.items()},
            "undecodable": len(t.bad)}
