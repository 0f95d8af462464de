"""Chain verification: a pure verifier over the bytes of the day files, and a thin shell.

The verifier never trusts what it reads: every frame is bounded by the buffer, every decode is
guarded, and it reports the first break of each file as `Finding(file, seq, cause, detail)`.
Causes:
  torn             the last file ends inside a record (a crash mid-write; not tampering)
  truncated        a file other than the last ends inside a record
  garbage          bytes after the last record that are not a record
  malformed        a frame whose CBOR is invalid (or longer than its item)
  non_canonical    valid CBOR that is not the deterministic encoding
  bad_record       a CBOR value that is not a record (missing/mistyped seq, ts, prev, hash)
  modified         the hash does not match the record's contents
  deleted          records are missing (seq jumps, prev does not link)
  reordered        records (or day files) are out of order
  duplicate        a seq appears twice
  chain_break      seq follows but prev does not link (a record replaced or inserted)
  start_unanchored the log starts after seq 1 and no prune checkpoint vouches for the start (a
                   checkpoint starts the chain only when it signs a prune of whole day files
                   older than the retention period)
  checkpoint_before_start  an exported checkpoint vouches for a seq before the first record present
  checkpoint_mismatch / checkpoint_truncated / checkpoint_invalid   see checkpoint.py
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from stockade.audit import checkpoint as cp
from stockade.audit import record as _record
from stockade.audit.record import FRAME, MAX_FRAME, MAX_RECORD, ZERO_HASH, BadRecord, check, check_fast, day_of

DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.log$")
TAMPER_FREE = {"torn"}     # causes that are crash artifacts, not evidence of tampering
_LOOKAHEAD = 100_000
_NO_STOP = (1 << 64) - 1


def _next_stop(cp_sorted: list[int], seq: int) -> int:
    """The first checkpointed seq at or after `seq` (the native scan stops before it: checkpoints are
    matched in Python); a large sentinel when there is none."""
    i = bisect.bisect_left(cp_sorted, seq)
    return min(cp_sorted[i], _NO_STOP) if i < len(cp_sorted) else _NO_STOP


def _scan(data: Any, o: int, end: int, exp_seq: int, last_hash: bytes, cp_sorted: list[int]) -> tuple[int, int, bytes]:
    """Skip the run of provably canonical, linked, un-checkpointed records from offset `o` with the
    native checker: (new offset, records, last hash). (o, 0, last_hash) when it is not built, or
    for whatever it cannot prove (the Python path then checks that record and names any break)."""
    native = _record.NATIVE
    if native is None or exp_seq >= _NO_STOP:
        return o, 0, last_hash
    out: tuple[int, int, bytes] = native.scan(data, o, end, exp_seq, last_hash, _next_stop(cp_sorted, exp_seq))
    return out


@dataclass
class Finding:
    file: str
    seq: int | None
    cause: str
    detail: str
    offset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    files: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: bytes | None = None
    start: str | None = None               # genesis | checkpoint | trusted (--since)
    anchored_through: int | None = None    # highest seq a valid checkpoint vouches for
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    end_offset: int = 0                    # end of the last good record in the last file
    last_file: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def torn_only(self) -> bool:
        return bool(self.findings) and all(f.cause in TAMPER_FREE for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "status": "intact" if self.ok else "torn" if self.torn_only else "broken",
                "files": self.files, "records": self.records, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "head": self.head.hex() if self.head else None,
                "start": self.start, "anchored_through": self.anchored_through,
                "unanchored_after": self.anchored_through if self.anchored_through is not None else 0,
                "findings": [f.to_dict() for f in self.findings], "notes": self.notes}


def _looks_torn(rest: bytes | memoryview) -> bool:
    """Is `rest` (an incomplete frame at EOF) a plausible prefix of a record write?"""
    if len(rest) < 4 or not any(rest):
        return True     # a short header, or zeros a filesystem left after a crash
    n = FRAME.unpack_from(rest, 0)[0]
    if n == 0 or n > MAX_RECORD:
        return False
    body = bytes(rest[4:6])
    if not body:
        return True
    if not (0xA1 <= body[0] <= 0xB8):     # a map head
        return False
    return len(body) < 2 or 0x61 <= body[1] <= 0x78    # its first key is text


def prune_anchor_problem(info: dict[str, Any] | None, first_file: str) -> str | None:
    """Why a checkpoint may not start the chain at `first_file`; None when it may. Pure.

    Only a signed prune (v2: reason, file and retention signed) of a whole day file before
    `first_file`, older than the retention period when it was signed, starts the chain: anything
    else would let whoever can delete files cut the oldest records at any checkpointed seq.
    """
    if info is None:
        return "it is not a signed prune checkpoint"
    m = DAY_FILE.match(info["file"])
    if m is None or info["file"] >= first_file:
        return f"the prune it records ({info['file']}) is not a whole day file before {first_file}"
    days = info["retention_days"]
    if days < 1 or m.group(1) >= day_of(info["ts"] - days * 86_400_000_000):
        return f"{info['file']} was not past the retention period ({days} days) when the prune was signed"
    return None


class ChainVerifier:
    """Feed day files in order (`feed`), then `finish()`. Pure: no I/O.

    `checkpoints` maps seq -> hash from signed checkpoints; `prunes` seq -> the signed facts of
    prune checkpoints (the only ones that may start the chain); `exported` the seqs of
    checkpoints kept elsewhere (each must still be in the log); `trust_start` accepts the first
    record's prev as given (verification from a date on).
    """

    def __init__(self, checkpoints: dict[int, bytes] | None = None, *, trust_start: bool = False,
                 prunes: dict[int, dict[str, Any]] | None = None, exported: Iterable[int] = ()):
        self.cps = dict(checkpoints or {})
        self.cp_sorted = sorted(self.cps)
        self.prunes = dict(prunes or {})
        self.exported = set(exported)
        self.trust_start = trust_start
        self.r = Report()
        self.exp_seq: int | None = None
        self.last_hash: bytes | None = None
        self.last_file: str | None = None
        self.resync = False     # after a break: trust the next file's first record

    # -- per file ---------------------------------------------------------------------------
    def feed(self, name: str, data: bytes | mmap.mmap | memoryview, *, last: bool) -> None:
        self.r.files += 1
        n = len(data)
        o = 0
        first = True
        unpack = FRAME.unpack_from
        cps = self.cps
        while o < n:
            if not first and self.exp_seq is not None and self.last_hash is not None:
                o, k, h = _scan(data, o, n, self.exp_seq, self.last_hash, self.cp_sorted)
                if k:
                    self.last_hash, self.exp_seq = h, self.exp_seq + k
                    self.r.records += k
                    if o >= n:
                        break
            ln = unpack(data, o)[0] if n - o >= 4 else 0
            if ln == 0 or ln > MAX_FRAME or o + 4 + ln > n:
                self._bad_tail(name, data, o, last)
                break
            body = data[o + 4:o + 4 + ln]
            if type(body) is not bytes:
                body = bytes(body)
            rec = check_fast(body)
            if rec is not None and not first:
                # The common case, inlined: the next seq, linked to the previous hash.
                seq = rec["seq"]
                if seq == self.exp_seq and rec["prev"] == self.last_hash and seq not in cps:
                    self.last_hash = rec["hash"]
                    self.exp_seq = seq + 1
                    self.r.records += 1
                    o += 4 + ln
                    continue
            if rec is None:
                try:
                    rec = check(body)
                except BadRecord as e:
                    # The framing still holds: report this record and check the rest of the file,
                    # the next record restarting the chain (a reader never stops silently).
                    self._add(name, self.exp_seq, e.cause, self._claim(body, e.detail), o)
                    self.resync = True
                    first = True
                    o += 4 + ln
                    continue
            if not self._link(name, rec, data, o, first):
                self.resync = True
                break
            first = False
            o += 4 + ln
        if self.exp_seq is not None:
            self.r.last_seq = self.exp_seq - 1
            self.r.head = self.last_hash
        if last:
            self.r.end_offset = o
            self.r.last_file = name

    def _claim(self, body: bytes, detail: str) -> str:
        try:
            v = cbor2.loads(body)
            s = v.get("seq") if isinstance(v, dict) else None
        except Exception:
            s = None
        if type(s) is int and self.exp_seq is not None and s != self.exp_seq:
            return f"{detail} (the record claims seq {s}, expected {self.exp_seq})"
        return detail

    def _bad_tail(self, name: str, data: Any, o: int, last: bool) -> None:
        rest = data[o:]
        size = len(data) - o
        if last and _looks_torn(rest):
            self._add(name, self.exp_seq, "torn",
                      f"the file ends inside a record ({size} bytes after seq {self._prev_seq()}): "
                      "a crash mid-write, not tampering; the next start moves it aside", o)
        elif last:
            self._add(name, self.exp_seq, "garbage",
                      f"{size} bytes after seq {self._prev_seq()} are not a record", o)
        else:
            self._add(name, self.exp_seq, "truncated",
                      f"the file ends inside a record ({size} bytes) but later files exist", o)
        self.resync = True

    def _prev_seq(self) -> Any:
        return self.exp_seq - 1 if self.exp_seq is not None else "?"

    def _link(self, name: str, rec: dict[str, Any], data: Any, o: int, first: bool) -> bool:
        seq, prev, h = rec["seq"], rec["prev"], rec["hash"]
        r = self.r
        if self.exp_seq is None or (self.resync and first):
            # The start of the log (or of the part after a break).
            if self.exp_seq is None and not self.resync:
                why = prune_anchor_problem(self.prunes.get(seq - 1), name) if self.cps.get(seq - 1) == prev \
                    else f"no checkpoint vouches for seq {seq - 1}"
                if seq == 1 and prev == ZERO_HASH:
                    r.start = "genesis"
                elif why is None:
                    r.start = "checkpoint"
                    r.notes.append(pruned_note(seq, self.prunes[seq - 1]))
                elif self.trust_start:
                    r.start = "trusted"
                    r.notes.append(f"verified from seq {seq} on; earlier records were not checked")
                else:
                    self._add(name, seq, "start_unanchored",
                              f"the log starts at seq {seq} and {why}: earlier records deleted", o)
                r.first_seq = seq
            else:
                r.notes.append(f"{name}: resumed checking at seq {seq} after an earlier break")
            self.resync = False
        elif seq != self.exp_seq or prev != self.last_hash:
            self._order_issue(name, rec, data, o, first)
            return False
        self._accept(name, seq, h)
        return True

    def _order_issue(self, name: str, rec: dict[str, Any], data: Any, o: int, first: bool) -> None:
        seq, exp = rec["seq"], self.exp_seq
        assert exp is not None
        if seq == exp:
            self._add(name, seq, "chain_break",
                      f"seq {seq} does not link to seq {exp - 1} (prev differs): a record was replaced or inserted", o)
            return
        if first and self.last_file and seq > exp:
            later = _seqs_after(data, o)
            if exp in later:
                self._add(name, exp, "reordered", f"day file starts at seq {seq} but contains seq {exp} later", o)
            else:
                self._add(name, exp, "deleted",
                          f"records {exp}..{seq - 1} missing between {self.last_file} and {name} "
                          "(a day file deleted or truncated?)", o)
            return
        if first and self.last_file and seq < exp:
            self._add(name, exp, "reordered",
                      f"{name} starts at seq {seq}, before the end of {self.last_file} (seq {exp - 1}): "
                      "day files out of order or replayed", o)
            return
        if seq < exp:
            cause = "duplicate" if seq in _seqs_before_cached(self) else "reordered"
            self._add(name, exp, cause, f"found seq {seq} where seq {exp} was expected", o)
            return
        later = _seqs_after(data, o)
        if exp in later:
            self._add(name, exp, "reordered", f"found seq {seq} where seq {exp} was expected; seq {exp} comes later", o)
        else:
            self._add(name, exp, "deleted", f"records {exp}..{seq - 1} are missing (found seq {seq})", o)

    def _accept(self, name: str, seq: int, h: bytes) -> None:
        r = self.r
        want = self.cps.get(seq)
        if want is not None:
            if want != h:
                self._add(name, seq, "checkpoint_mismatch",
                          f"a signed checkpoint says seq {seq} has hash {want.hex()[:16]}..., the log has "
                          f"{h.hex()[:16]}...: the log was rewritten")
            else:
                r.anchored_through = max(r.anchored_through or 0, seq)
        r.records += 1
        r.last_seq = seq
        r.head = h
        self.exp_seq = seq + 1
        self.last_hash = h
        self.last_file = name

    def _add(self, name: str, seq: int | None, cause: str, detail: str, offset: int | None = None) -> None:
        self.r.findings.append(Finding(name, seq, cause, detail, offset))

    def finish(self) -> Report:
        r = self.r
        gone = sorted(s for s in self.exported if r.first_seq is None or s < r.first_seq)
        if gone and r.files and not self.trust_start:
            self._add("", gone[0], "checkpoint_before_start",
                      f"an exported checkpoint vouches for seq {gone[0]} but the log starts at seq "
                      f"{r.first_seq if r.first_seq is not None else '(none)'}: those records are no longer here "
                      "(pruned, or deleted)")
        if self.cps and r.last_seq is not None:
            top = max(self.cps)
            if top > r.last_seq:
                self._add(r.last_file or "", r.last_seq + 1, "checkpoint_truncated",
                          f"a signed checkpoint vouches for seq {top} but the log ends at seq {r.last_seq}: "
                          "records removed from the tail")
        elif self.cps and r.last_seq is None and r.files:
            self._add("", None, "checkpoint_truncated",
                      f"a signed checkpoint vouches for seq {max(self.cps)} but the log has no records")
        return r


def pruned_note(first_seq: int, info: dict[str, Any]) -> str:
    record = f" (audit.pruned record seq {info['record']})" if info.get("record") else ""
    return (f"log starts at seq {first_seq}: records up to seq {first_seq - 1} were pruned through {info['file']} "
            f"on {day_of(info['ts'])} (retention {info['retention_days']} days, signed prune checkpoint){record}")


def _seqs_after(data: Any, o: int) -> set[int]:
    """Seqs claimed by the frames from offset `o` on (best effort; for diagnosis only)."""
    out: set[int] = set()
    n = len(data)
    for _ in range(_LOOKAHEAD):
        if o + 4 > n:
            break
        ln = FRAME.unpack_from(data, o)[0]
        if ln == 0 or o + 4 + ln > n:
            break
        with contextlib.suppress(Exception):
            v = cbor2.loads(bytes(data[o + 4:o + 4 + ln]))
            if isinstance(v, dict) and type(v.get("seq")) is int:
                out.add(v["seq"])
        o += 4 + ln
    return out


def _seqs_before_cached(v: ChainVerifier) -> set[int]:
    # Seqs are dense from first_seq to last_seq when we get here (every record so far linked).
    if v.r.first_seq is None or v.exp_seq is None:
        return set()
    return set(range(v.r.first_seq, v.exp_seq))


def verify_buffers(files: Iterable[tuple[str, bytes]], checkpoints: dict[int, bytes] | None = None, *,
                   trust_start: bool = False) -> Report:
    """Verify in-memory day files given in order (pure; used by tests and the fuzzer)."""
    items = list(files)
    last = max((i for i, (_, d) in enumerate(items) if len(d)), default=len(items) - 1)
    v = ChainVerifier(checkpoints, trust_start=trust_start)
    for i, (name, data) in enumerate(items):
        v.feed(name, data, last=i == last)
    return v.finish()


# -- shell --------------------------------------------------------------------------------------
def day_files(audit_dir: Path) -> list[Path]:
    if not audit_dir.is_dir():
        return []
    return sorted(p for p in audit_dir.iterdir() if DAY_FILE.match(p.name) and p.is_file())


def _read(path: Path, limit: int | None = None) -> bytes | mmap.mmap:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size if limit is None else min(limit, os.fstat(fd).st_size)
        if size == 0:
            return b""
        if size < (1 << 20):
            return os.pread(fd, size, 0)
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        return m
    finally:
        os.close(fd)


# -- parallel pre-pass ----------------------------------------------------------------------------
PARALLEL_MIN_BYTES = 8 << 20
_CHUNK_BYTES = 4 << 20


def _chunks(path: Path, size: int) -> list[tuple[int, int]] | None:
    """Split a day file into ~4 MiB ranges at frame boundaries (None if the framing is broken)."""
    data = _read(path, size)
    try:
        if _record.NATIVE is not None:
            native: list[tuple[int, int]] | None = _record.NATIVE.chunks(data, len(data), _CHUNK_BYTES)
            return native
        out, start, o, n = [], 0, 0, len(data)
        while o < n:
            if n - o < 4:
                return None
            ln = FRAME.unpack_from(data, o)[0]
            if ln == 0 or ln > MAX_FRAME or o + 4 + ln > n:
                return None
            o += 4 + ln
            if o - start >= _CHUNK_BYTES:
                out.append((start, o))
                start = o
        if start < n:
            out.append((start, n))
        return out
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _check_chunk(job: tuple[str, int, int, frozenset[int]]) -> dict[str, Any] | None:
    """Fast-check one range of a day file (in a worker process); None at the first doubt."""
    path, start, end, cp_seqs = job
    data = _read(Path(path), end)
    try:
        return _check_range(data, start, end, sorted(cp_seqs))
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _check_range(data: Any, start: int, end: int, cp_sorted: list[int]) -> dict[str, Any] | None:
    """Fast-check data[start:end] (whole frames): the chain it carries, or None at the first doubt."""
    o = start
    first_seq = first_prev = last_hash = None
    seq = 0
    hits: dict[int, bytes] = {}
    cp_seqs = set(cp_sorted)
    while o < end:
        if first_seq is not None and last_hash is not None:
            o, k, last_hash = _scan(data, o, end, seq + 1, last_hash, cp_sorted)
            seq += k
            if o >= end:
                break
        ln = FRAME.unpack_from(data, o)[0]
        rec = check_fast(bytes(data[o + 4:o + 4 + ln]))
        if rec is None:
            return None
        if first_seq is None:
            first_seq, first_prev = rec["seq"], rec["prev"]
        elif rec["seq"] != seq + 1 or rec["prev"] != last_hash:
            return None
        seq, last_hash = rec["seq"], rec["hash"]
        if seq in cp_seqs:
            hits[seq] = last_hash
        o += 4 + ln
    return {"first_seq": first_seq, "first_prev": first_prev, "last_seq": seq, "last_hash": last_hash,
            "count": seq - first_seq + 1 if first_seq else 0, "hits": hits}


def _check_in_threads(jobs: list[tuple[str, int, int, frozenset[int]]], workers: int,
                      progress: Callable[[int, int], None] | None) -> list[dict[str, Any] | None]:
    """The chunks on `workers` threads: the native scan releases the GIL, so threads use every
    core without forking the process or reading each file twice."""
    from concurrent.futures import ThreadPoolExecutor

    ends: dict[str, int] = {}
    for path, _a, b, _k in jobs:
        ends[path] = max(b, ends.get(path, 0))
    bufs: dict[str, Any] = {}
    cp_sorted = sorted(jobs[0][3]) if jobs else []
    total, done, parts = sum(b - a for _p, a, b, _k in jobs), 0, []
    try:
        for path, end in ends.items():
            bufs[path] = _read(Path(path), end)
        with ThreadPoolExecutor(workers, thread_name_prefix="audit-verify") as pool:
            futs = [pool.submit(_check_range, bufs[p], a, b, cp_sorted) for p, a, b, _k in jobs]
            for (_p, a, b, _k), fut in zip(jobs, futs, strict=True):
                parts.append(fut.result())
                done += b - a
                if progress is not None:
                    progress(done, total)
    finally:
        for data in bufs.values():
            if isinstance(data, mmap.mmap):
                data.close()
    return parts


def _parallel(files: list[Path], sizes: list[int], cps: dict[int, bytes], trust_start: bool,
              workers: int, prunes: dict[int, dict[str, Any]] | None = None,
              exported: Iterable[int] = (), progress: Callable[[int, int], None] | None = None) -> Report | None:
    """Verify an intact log on several cores; None when anything needs the exact sequential pass."""
    import multiprocessing

    jobs: list[tuple[str, int, int, frozenset[int]]] = []
    names: list[str] = []
    keys = frozenset(cps)
    for p, size in zip(files, sizes, strict=True):
        if not size:
            continue
        ch = _chunks(p, size)
        if ch is None:
            return None
        jobs += [(str(p), a, b, keys) for a, b in ch]
        names += [p.name] * len(ch)
    if not jobs:
        return None
    parts: list[dict[str, Any] | None] = []
    if _record.NATIVE is not None:
        parts = _check_in_threads(jobs, workers, progress)
    else:
        total, done = sum(b - a for _p, a, b, _k in jobs), 0
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for job, part in zip(jobs, pool.imap(_check_chunk, jobs, chunksize=1), strict=True):
                parts.append(part)
                done += job[2] - job[1]
                if progress is not None:
                    progress(done, total)
    r = Report(files=len(files))
    exp_seq, last_hash = None, None
    for name, part in zip(names, parts, strict=True):
        if part is None or part["first_seq"] is None:
            return None
        if exp_seq is None:
            if part["first_seq"] == 1 and part["first_prev"] == ZERO_HASH:
                r.start = "genesis"
            elif (cps.get(part["first_seq"] - 1) == part["first_prev"] and prunes
                  and prune_anchor_problem(prunes.get(part["first_seq"] - 1), name) is None):
                r.start = "checkpoint"
                r.notes.append(pruned_note(part["first_seq"], prunes[part["first_seq"] - 1]))
            elif trust_start:
                r.start = "trusted"
                r.notes.append(f"verified from seq {part['first_seq']} on; earlier records were not checked")
            else:
                return None
            r.first_seq = part["first_seq"]
        elif part["first_seq"] != exp_seq or part["first_prev"] != last_hash:
            return None
        for seq, h in part["hits"].items():
            if cps[seq] != h:
                return None
            r.anchored_through = max(r.anchored_through or 0, seq)
        r.records += part["count"]
        exp_seq, last_hash = part["last_seq"] + 1, part["last_hash"]
        r.last_seq, r.head, r.last_file = part["last_seq"], part["last_hash"], name
    if cps and r.last_seq is not None and max(cps) > r.last_seq:
        return None
    if any(s < (r.first_seq or 0) for s in exported):
        return None
    return r


def verify_dir(audit_dir: Path, pubkey: bytes | None, *, since: str | None = None,
               extra_checkpoints: list[dict[str, Any]] | None = None,
               limit: tuple[str, int] | None = None, only: list[Path] | None = None,
               progress: Callable[[int, int], None] | None = None) -> Report:
    """Verify the day files of `audit_dir` against the signed checkpoints.

    `limit` = (file name, size): stop reading that file at `size` (the durable end the running
    server reported), so a write in progress is not mistaken for a torn record. `progress(done,
    total)` (bytes) is told after each file or chunk (the CLI's progress bar).
    """
    prunes: dict[int, dict[str, Any]] = {}
    cps, bad = cp.load_valid(audit_dir / cp.LOG_NAME, pubkey, prunes)
    exported = set()
    for c in extra_checkpoints or []:
        cps[c["seq"]] = bytes.fromhex(c["hash"])
        exported.add(c["seq"])
        info = cp.prune_info(c)
        if info is not None:
            prunes[c["seq"]] = info
    files = only if only is not None else day_files(audit_dir)
    if since:
        files = [p for p in files if p.name[:10] >= since]
    if limit:
        files = [p for p in files if p.name <= limit[0]]
    v = ChainVerifier(cps, trust_start=bool(since) or only is not None, prunes=prunes, exported=exported)
    for b in bad:
        v._add(cp.LOG_NAME, b.get("seq"), "checkpoint_invalid", b["error"])
    if pubkey is None:
        v.r.notes.append("no audit public key (keys/audit_ed25519.pub): checkpoints not verified")
    sizes = []
    for p in files:
        try:
            sizes.append(p.stat().st_size if not (limit and limit[0] == p.name) else limit[1])
        except FileNotFoundError:
            sizes.append(0)
    last = max((i for i, s in enumerate(sizes) if s), default=len(files) - 1)
    workers = min(os.cpu_count() or 1, 8)
    if workers > 1 and sum(sizes) >= PARALLEL_MIN_BYTES and not bad:
        fast = _parallel(files, sizes, cps, v.trust_start, workers, prunes, exported, progress)
        if fast is not None:
            fast.notes = v.r.notes + fast.notes + _torn_notes(audit_dir)
            fast.end_offset = sizes[last] if sizes else 0
            return fast
    for i, p in enumerate(files):
        lim = limit[1] if limit and limit[0] == p.name else None
        if limit and p.name > limit[0]:
            continue
        data = _read(p, lim)
        try:
            v.feed(p.name, data, last=i == last)
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
        if progress is not None:
            progress(sum(sizes[:i + 1]), sum(sizes))
    r = v.finish()
    if not files:
        r.notes.append("no day files")
    r.notes += _torn_notes(audit_dir)
    return r


def _torn_notes(audit_dir: Path) -> list[str]:
    torn_dir = audit_dir / "torn"
    if not torn_dir.is_dir():
        return []
    return [f"torn write moved aside earlier: torn/{t.name} ({t.stat().st_size} bytes)"
            for t in sorted(torn_dir.iterdir())]
