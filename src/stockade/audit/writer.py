"""The audit writer: one writer per home, group commit, crash recovery, disk-full buffering.

Imperative shell around `record.py`:
- `Store` owns the day files (synchronous; one thread at a time): recovers a torn tail on open,
  appends frames and fdatasyncs, fsyncs the directory when it creates a day file, and rolls a
  failed (ENOSPC) append back so the file never keeps half a batch.
- `AuditWriter` (asyncio) assigns seq/ts/prev/hash on the event loop in call order, queues the
  frames, and whatever is queued is written as one batch in a worker thread (one batch at a
  time): every caller waiting in that batch shares one fsync, and the loop keeps serving
  meanwhile. A batch starts from the caller's enqueue once encoding has taken longer than an
  fsync (so they overlap), else from the flusher after the acknowledged callers re-queue.
  `record()` returns only once its record is durable.
- fsync failing is fatal (the kernel may have dropped the dirty pages; retrying could "succeed"
  without the data): the writer refuses every further record, so the gateway refuses calls.
- ENOSPC: records stay queued in memory (up to `audit.buffer_records`), callers proceed with a
  critical health alert, a retry runs every `audit.retry_seconds`, and the queue is flushed in
  order once space returns; when the buffer is full, calls are refused. `fail_mode: halt`
  refuses calls at once instead.
- `audit/.lock` (flock) is held by the running server; offline CLI writers take it too, so two
  writers never fork the chain (`append_offline_or_admin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stockade.audit import checkpoint as cp
from stockade.audit import retention
from stockade.audit.budget import ByteBudget
from stockade.audit.index import Index, IndexProcess, row_fields
from stockade.audit.record import (
    FRAME,
    MAX_FRAME,
    ZERO_HASH,
    BadRecord,
    build,
    build_frame,
    check,
    day_of,
    frame,
    now_us,
)
from stockade.audit.retention import Anchor
from stockade.audit.verify import _looks_torn, day_files
from stockade.core.errors import StockadeError, err

LOCK_NAME = ".lock"
RESERVE_NAME = "reserve"
_HEADROOM = 64 << 10          # free space (beyond a whole reserve) before a full disk counts as recovered
TORN_DIR = "torn"
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    pass


class WriterFailed(Exception):
    pass


class AuditDamaged(Exception):
    """The newest day file is damaged in a way a crash cannot explain: refuse to append."""


@dataclass
class Head:
    seq: int = 0
    hash: bytes = ZERO_HASH
    file: str | None = None
    size: int = 0
    ts: int | None = None        # the head record's timestamp (known after recovery)


# -- the files ------------------------------------------------------------------------------------
class Store:
    def __init__(self, audit_dir: Path):
        self.dir = audit_dir
        self.fd: int | None = None
        self.day: str | None = None
        self.size = 0
        # Space reserved in advance (`audit/reserve`): released bit by bit when an append meets a
        # full disk, so records stay durable (and acknowledged only then) while the disk is full.
        self.reserve_target = 0
        self.reserve_fd: int | None = None
        self.reserve_size = 0
        self.use_reserve = False
        self.reserve_used = 0          # bytes released since the reserve was last whole

    def open_reserve(self, target: int, use: bool) -> None:
        """Create or top up `audit/reserve` to `target` bytes; DiskFull if the disk cannot hold it."""
        self.reserve_target, self.use_reserve = target, use
        if target <= 0:
            return
        self.reserve_fd = os.open(self.dir / RESERVE_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o600)
        if not self.regrow():
            raise DiskFull(f"cannot reserve {target} bytes in {self.dir}")

    def regrow(self) -> bool:
        """Make the reserve whole again; False while the disk has no room for it."""
        if self.reserve_fd is None:
            return True
        try:
            os.posix_fallocate(self.reserve_fd, 0, self.reserve_target)
        except OSError as e:
            if e.errno not in _SPACE_ERRNOS:
                raise
            self.reserve_size = os.fstat(self.reserve_fd).st_size
            return False
        self.reserve_size, self.reserve_used = self.reserve_target, 0
        return True

    def _release(self, need: int) -> bool:
        """Give back reserve space for `need` more bytes (rounded up generously); False if none is left."""
        if not self.use_reserve or self.reserve_fd is None or self.reserve_size <= 0:
            return False
        give = min(self.reserve_size, (need + (16 << 10) + 4095) // 4096 * 4096)
        os.ftruncate(self.reserve_fd, self.reserve_size - give)
        self.reserve_size -= give
        self.reserve_used += give
        return True

    def recover(self) -> tuple[Head, dict[str, Any] | None]:
        """Find the head; move a torn final record aside. Raises AuditDamaged on anything else.

        Only the framing of the newest non-empty file and its last record are checked here (fast);
        `stockade audit verify` checks the whole chain.
        """
        torn: dict[str, Any] | None = None
        for p in reversed(day_files(self.dir)):
            data = p.read_bytes()
            if not data:
                continue
            o, last = 0, None
            n = len(data)
            while o < n:
                ln = FRAME.unpack_from(data, o)[0] if n - o >= 4 else 0
                if ln == 0 or ln > MAX_FRAME or o + 4 + ln > n:
                    break
                last = (o, ln)
                o += 4 + ln
            if o < n:
                rest = data[o:]
                if not _looks_torn(rest):
                    raise AuditDamaged(f"{p.name}: {n - o} bytes at offset {o} are not a record (garbage or "
                                       "tampering, not a torn write)")
                torn = self._move_aside(p, o, rest)
            if last is None:
                continue
            try:
                rec = check(data[last[0] + 4:last[0] + 4 + last[1]])
            except BadRecord as e:
                raise AuditDamaged(f"{p.name}: the last record (offset {last[0]}) is {e.cause}: {e.detail}") from None
            return Head(rec["seq"], rec["hash"], p.name, o, rec["ts"]), torn
        return Head(), torn

    def _move_aside(self, p: Path, offset: int, rest: bytes) -> dict[str, Any]:
        tdir = self.dir / TORN_DIR
        tdir.mkdir(mode=0o700, exist_ok=True)
        target = tdir / f"{p.name}.{offset}.{time.time_ns() // 1000}.torn"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, rest)
            os.fsync(fd)
        finally:
            os.close(fd)
        cp.fsync_dir(tdir)
        cp.fsync_dir(self.dir)
        fd = os.open(p, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        return {"file": p.name, "offset": offset, "bytes": len(rest), "moved_to": f"{TORN_DIR}/{target.name}"}

    def _open(self, day: str) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        path = self.dir / f"{day}.log"
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(path, flags)
            created = False
        if created:
            try:
                cp.fsync_dir(self.dir)     # the new name must survive a crash before any record in it
            except OSError as e:
                os.close(fd)
                raise WriterFailed(f"fsync of {self.dir} failed: {e}") from e
        self.fd, self.day, self.size = fd, day, os.fstat(fd).st_size

    def append(self, day: str, frames: list[bytes]) -> list[int]:
        """Write frames to `day`'s file and fdatasync; their offsets. DiskFull leaves the file as it was."""
        try:
            if day != self.day or self.fd is None:
                self._open(day)
        except OSError as e:
            if e.errno in _SPACE_ERRNOS:
                raise DiskFull(str(e)) from e
            raise WriterFailed(f"cannot open the day file: {e}") from e
        assert self.fd is not None
        start = self.size
        offsets = []
        pos = start
        for f in frames:
            offsets.append(pos)
            pos += len(f)
        whole = b"".join(frames)
        while True:
            data = memoryview(whole)
            try:
                while data:
                    data = data[os.write(self.fd, data):]
                break
            except OSError as e:
                try:
                    os.ftruncate(self.fd, start)
                except OSError as e2:
                    raise WriterFailed(f"write failed ({e}) and could not be rolled back ({e2})") from e2
                if e.errno not in _SPACE_ERRNOS:
                    raise WriterFailed(f"write failed: {e}") from e
                if not self._release(len(whole)):
                    raise DiskFull(str(e)) from e
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise WriterFailed(f"fdatasync failed: {e}") from e
        self.size = pos
        return offsets

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.day = None
        if self.reserve_fd is not None:
            os.close(self.reserve_fd)
            self.reserve_fd = None

    def free_bytes(self) -> int:
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize


def last_record(path: Path) -> dict[str, Any] | None:
    """The last record of a day file (for pruning checkpoints); None if any frame does not decode."""
    from stockade.audit.index import BadFrame, iter_records

    out = None
    bad: list[BadFrame] = []
    for _o, _l, rec in iter_records(path, bad=bad):
        out = rec
    return None if bad else out




def _boot_s() -> float:
    """Seconds since boot, suspend included: a clock nobody sets (retention compares the wall clock with it)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# -- locking --------------------------------------------------------------------------------------
def try_lock(audit_dir: Path) -> int | None:
    fd = os.open(audit_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock(audit_dir: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        fd = try_lock(audit_dir)
        if fd is not None:
            return fd
        if time.monotonic() > deadline:
            raise err("Internal", f"another process holds {audit_dir / LOCK_NAME} (is another stockade serve "
                                  "running on this home?)")
        time.sleep(0.05)


def unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# -- the async writer ----------------------------------------------------------------------------
@dataclass(slots=True)
class _Item:
    seq: int
    hash: bytes
    ts: int
    day: str
    frame: bytes
    fut: asyncio.Future[int] | None = None


@dataclass
class Settings:
    checkpoint_every: int = 1000
    retention_days: int = 90
    fail_mode: str = "buffer"
    buffer_records: int = 10_000
    retry_seconds: float = 30.0
    agent_budget_bytes: int = 64 << 20
    agent_budget_seconds: float = 60.0
    reserve_bytes: int = 4 << 20

    @classmethod
    def of(cls, cfg: Any) -> Settings:
        d = cls()
        return cls(cfg.checkpoint_every, cfg.retention_days, cfg.fail_mode, cfg.buffer_records, cfg.retry_seconds,
                   getattr(cfg, "agent_budget_bytes", d.agent_budget_bytes),
                   getattr(cfg, "agent_budget_seconds", d.agent_budget_seconds),
                   getattr(cfg, "reserve_bytes", d.reserve_bytes))


@dataclass
class _DiskFullState:
    since: int
    first_seq: int | None = None
    refused: int = 0
    exhausted: bool = False       # the reserve is used up (or halt mode): calls are refused
    dropped: int = 0              # unacknowledged internal records given up (never a caller's)


@dataclass
class AuditWriter:
    audit_dir: Path
    keys_dir: Path | None
    settings: Settings = field(default_factory=Settings)
    bus: Any = None
    health: dict[str, Any] | None = None
    clock: Any = now_us

    def __post_init__(self) -> None:
        self.store = Store(self.audit_dir)
        self.head = Head()
        self.durable = Head()
        self.failed: str | None = None
        self.disk_full: _DiskFullState | None = None
        self.dropped = 0              # records given up at close: a stop with any is not clean
        self._reserve_used_total = 0
        self.closed = True
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        # The index is derived data, kept by its own process tailing the day files (index.py).
        self.indexer = IndexProcess(self.audit_dir)
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._key: Any = None
        self._last_cp = 0
        self._flushing = False
        # The one batch being written (queue prefix length, its future); see `_start_flush`.
        self._pending: tuple[int, asyncio.Future[tuple[list[int], float]]] | None = None
        self._idle_since = 0.0        # monotonic time the last batch became durable
        self._fsync_est = 0.0         # moving average of one batch's write + fdatasync (seconds)
        self.stats = {"batches": 0, "records": 0}
        self._budget = ByteBudget(self.settings.agent_budget_bytes, self.settings.agent_budget_seconds)
        self._anchor = Anchor(0, 0.0)
        self._skew_reported = False
        self.forwarders: list[Any] = []      # audit.forward sinks (threads reading the day files)
        self._loop: Any = None        # the running loop, set by open (record's futures; one lookup fewer)

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self, *, lock_timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._lock_fd = await loop.run_in_executor(self._ex, lock, self.audit_dir, lock_timeout)
        except OSError as e:
            raise self._start_error(e) from None
        try:
            try:
                buffer = self.settings.fail_mode == "buffer"
                await loop.run_in_executor(self._ex, self.store.open_reserve,
                                           self.settings.reserve_bytes if buffer else 0, buffer)
                self.head, torn = await loop.run_in_executor(self._ex, self.store.recover)
            except AuditDamaged as e:
                raise err("Internal", f"audit log damaged: {e}. Run `stockade audit verify`; to start a new "
                                      "segment, move the damaged day file out of audit/ (the break stays "
                                      "visible to verify and to exported checkpoints).") from None
            self.durable = Head(self.head.seq, self.head.hash, self.head.file, self.head.size)
            self._anchor = Anchor(self.head.ts if self.head.ts is not None else self.clock(), _boot_s())
            if self.keys_dir is not None and (self.keys_dir / cp.KEY_NAME).exists():
                self._key = cp.load_private(self.keys_dir)
            last = cp.latest(self.audit_dir / cp.LOG_NAME)
            self._last_cp = last["seq"] if last else 0
        except BaseException as e:
            unlock(self._lock_fd)
            self._lock_fd = None
            self.store.close()
            if isinstance(e, OSError | DiskFull):
                raise self._start_error(e) from None
            raise
        self.closed = False
        self._loop = loop
        self._set_health("ok")
        self._tell_index()               # starts the indexer: it catches up from its high-water mark
        self._tasks.append(asyncio.create_task(self._flusher(), name="audit-flusher"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="audit-retention"))
        self._tasks.append(asyncio.create_task(self._index_timer(), name="audit-index"))
        if torn:
            self._publish("audit.torn_recovered", torn, "warning")
            await self.record({"kind": "audit.torn_recovered", **torn})

    def _start_error(self, e: BaseException) -> StockadeError:
        if isinstance(e, DiskFull) or getattr(e, "errno", None) in _SPACE_ERRNOS:
            return err("Internal", f"audit disk full at start: {e}. The audit log needs free space in {self.audit_dir} "
                                   f"(audit.reserve_bytes = {self.settings.reserve_bytes} are reserved for records "
                                   "written while the disk is full); free space and start again")
        return err("Internal", f"cannot open the audit log in {self.audit_dir}: {e}")

    async def close(self) -> None:
        """Flush, write the shutdown checkpoint, release the lock."""
        if self.closed and self._lock_fd is None:
            return
        loop = asyncio.get_running_loop()
        self.closed = True                   # no new records from here on
        for _ in range(250):                 # drain what is queued (one more try if the disk is full)
            if (not self._queue or self.failed) and not self._flushing:
                break
            if not self._flushing:
                self._wake.set()
            await asyncio.sleep(0.02)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._queue:
            # Never acknowledged (a record is acknowledged only once durable): the callers are
            # refused, the chain rewinds (no seq skipped or reused), and the stop is not clean.
            self.dropped = len(self._queue)
            print(f"stockade: audit: {self.dropped} queued records could not be written at shutdown "
                  f"({self.failed or 'disk full'}); their calls were refused, none was acknowledged", file=sys.stderr)
            for it in self._queue:
                if it.fut and not it.fut.done():
                    it.fut.set_exception(self._refusal("closed"))
            self._queue.clear()
            self.head = Head(self.durable.seq, self.durable.hash, self.durable.file, self.durable.size)
        if not self.failed and self.durable.seq > self._last_cp:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._ex, self._checkpoint_sync, "shutdown")
        d = self.durable
        await self.indexer.stop(d.seq, d.file, d.size, final=not self.disk_full)
        await loop.run_in_executor(self._ex, self._close_sync)
        self._ex.shutdown(wait=True)

    def _close_sync(self) -> None:
        self.store.close()
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            self._lock_fd = None

    # -- recording -------------------------------------------------------------------------------
    async def record(self, rec: dict[str, Any]) -> int:
        """Append one record; returns its seq once it is durable (never before)."""
        if self.failed or self.closed or self.disk_full:
            self._accepting()        # (the common case without the call: it runs for every record)
        item = self._enqueue(rec, wait=True)
        agent = rec.get("agent")
        if type(agent) is str and self._budget.add(agent, len(item.frame), time.monotonic()):
            self._budget_alert(agent)
        if item.fut is not None:
            # A cancelled caller cancels only its future: the record stays queued and is written.
            await item.fut
        return item.seq

    def agent_over_budget(self, agent: str) -> float | None:
        """Seconds until `agent` may cause audit records again; None while it is under its byte budget."""
        return self._budget.over(agent, time.monotonic())

    def _budget_alert(self, agent: str) -> None:
        """The first breach in a window: one critical owner alert and one record (not counted to the agent)."""
        s = self.settings
        data = {"agent": agent, "budget_bytes": s.agent_budget_bytes, "window_seconds": s.agent_budget_seconds,
                "used_bytes": self._budget.used(agent, time.monotonic())}
        self._publish("audit.budget_exceeded", data, "critical")
        with contextlib.suppress(StockadeError):
            self._accepting()
            self._enqueue({"kind": "audit.budget_exceeded", **data}, wait=False)

    def _enqueue(self, rec: dict[str, Any], *, wait: bool) -> _Item:
        """Give the record its place in the chain (seq, ts, prev, hash) and queue it."""
        ts = max(self.clock(), 0)
        head = self.head
        seq = head.seq + 1
        try:
            fr, digest = build_frame(rec, seq, ts, head.hash)
        except ValueError as e:
            raise err("Internal", f"audit record refused: {e}") from None
        day = day_of(ts)
        if head.file and day < head.file[:10]:
            day = head.file[:10]     # the clock went back over midnight: never write to an older file
        item = _Item(seq, digest, ts, day, fr)
        # The head is updated in place (a new Head per record showed in the profile); nothing
        # else holds it: `durable` and the failure paths make their own.
        head.seq, head.hash, head.size, head.ts = seq, digest, 0, None
        if head.file is None or head.file[:10] != day:
            head.file = f"{day}.log"
        if wait:
            item.fut = self._loop.create_future()
        self._queue.append(item)
        if self._pending is None and not self.failed and time.monotonic() - self._idle_since >= self._fsync_est:
            # Nothing is being written and the loop has been producing records for longer than a
            # write takes: start writing what is queued now, so the fdatasync overlaps the
            # encoding of the records still coming (otherwise the flusher, run after every ready
            # caller, writes them all in one batch: best while encoding is cheaper than an fsync).
            self._start_flush()
        self._wake.set()
        return item

    def _accepting(self) -> None:
        if self.failed:
            raise self._refusal("failed")
        if self.closed:
            raise self._refusal("closed")
        if self.disk_full and self.disk_full.exhausted:
            self.disk_full.refused += 1
            raise self._refusal("halt" if self.settings.fail_mode == "halt" else "buffer_full")

    def _refusal(self, why: str) -> StockadeError:
        msg = {
            "failed": f"the audit log failed ({self.failed}); calls are refused until the gateway is restarted",
            "closed": "the audit log is closed (the gateway is stopping)",
            "halt": "the audit disk is full (audit.fail_mode: halt): calls are refused until space returns",
            "buffer_full": "the audit disk is full and the space reserved for it (audit.reserve_bytes) is used up: "
                           "calls are refused until space returns",
        }[why]
        return err("Internal", msg, audit=why)

    # -- the flusher -----------------------------------------------------------------------------
    def _start_flush(self) -> None:
        """Hand the queue's first run of same-day records to the writer thread: one write, one
        fdatasync. They stay queued (failure handlers refuse them) until `_flusher` sees it done."""
        first = self._queue[0]
        n = 0
        for it in self._queue:
            if it.day != first.day:
                break
            n += 1
        frames = [it.frame for it in self._queue[:n]]
        fut = asyncio.get_running_loop().run_in_executor(self._ex, self._append_timed, first.day, frames)
        self._pending = (n, fut)
        self._flushing = True

    def _append_timed(self, day: str, frames: list[bytes]) -> tuple[list[int], float]:
        t = time.monotonic()
        offsets = self.store.append(day, frames)
        return offsets, time.monotonic() - t

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (self._queue or self._pending) and not self.failed:
                if self._pending is None:
                    # One turn of the loop first: the callers just acknowledged queue their next
                    # records, and they join this batch (one fdatasync instead of two half-full ones).
                    await asyncio.sleep(0)
                    if self._pending is None:
                        if not self._queue or self.failed:
                            break
                        self._start_flush()
                assert self._pending is not None
                n, fut = self._pending
                try:
                    offsets, took = await fut
                except DiskFull as e:
                    self._pending, self._flushing = None, False
                    self._on_disk_full(str(e))
                    break
                except Exception as e:  # WriterFailed or anything unexpected: fatal, never ignored
                    self._pending, self._flushing = None, False
                    self._on_fatal(f"{type(e).__name__}: {e}")
                    break
                self._pending, self._flushing = None, False
                self._idle_since = time.monotonic()
                self._fsync_est = took if not self._fsync_est else 0.8 * self._fsync_est + 0.2 * took
                seg = self._queue[:n]
                del self._queue[:n]
                last = seg[-1]
                self.durable = Head(last.seq, last.hash, f"{last.day}.log", offsets[-1] + len(last.frame))
                self.stats["batches"] += 1
                self.stats["records"] += n
                for it in seg:
                    if it.fut is not None and not it.fut.done():
                        it.fut.set_result(it.seq)
                if self.store.reserve_used and not self.disk_full:
                    self._on_disk_full("writing into the reserved space", exhausted=False)
                elif self.disk_full and self.health is not None and "audit" in self.health:
                    self.health["audit"]["reserve_left"] = self.store.reserve_size
                every = self.settings.checkpoint_every
                if last.seq // every > self._last_cp // every:
                    with contextlib.suppress(Exception):
                        await loop.run_in_executor(self._ex, self._checkpoint_sync, "periodic")

    def _tell_index(self) -> None:
        """Tell the indexer process the durable end (it indexes up to there) and publish its lag."""
        d = self.durable
        self.indexer.tick(d.seq, d.file, d.size, paused=bool(self.disk_full))   # full disk: the log first
        if self.health is not None:
            self.health["audit_index"] = self.indexer.health(d.seq)

    async def _index_timer(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._tell_index()

    # -- failure modes ---------------------------------------------------------------------------
    def _on_fatal(self, why: str) -> None:
        self.failed = why
        for it in self._queue:
            if it.fut is not None and not it.fut.done():
                it.fut.set_exception(self._refusal("failed"))
        self._queue.clear()
        self.head = Head(self.durable.seq, self.durable.hash, self.durable.file, self.durable.size)
        self._set_health("critical", error=f"audit writer failed: {why}; calls are refused")
        self._publish("health.audit", {"status": "critical", "error": why, "refusing": True}, "critical")
        print(f"stockade: audit writer failed: {why}; refusing calls", file=sys.stderr)

    def _on_disk_full(self, why: str, *, exhausted: bool = True) -> None:
        """The disk is full: either records go into the reserve (still durable before they are
        acknowledged), or (`exhausted`: no reserve left, or halt mode) the queued callers are
        refused and the chain rewinds to the last durable record, so no seq is skipped or reused."""
        first = not self.disk_full
        if first:
            self.disk_full = _DiskFullState(since=self.clock(), first_seq=self._queue[0].seq if self._queue else None)
        state = self.disk_full
        assert state is not None
        if exhausted:
            state.exhausted = True
            for it in self._queue:
                if it.fut is None:
                    state.dropped += 1          # an internal event (never a caller's record)
                elif not it.fut.done():
                    state.refused += 1
                    it.fut.set_exception(self._refusal("halt" if self.settings.fail_mode == "halt" else "buffer_full"))
            self._queue.clear()
            self.head = Head(self.durable.seq, self.durable.hash, self.durable.file, self.durable.size)
        detail = {"status": "critical", "error": f"audit disk full: {why}", "mode": self.settings.fail_mode,
                  "refusing": state.exhausted, "reserve_left": self.store.reserve_size,
                  "retry_seconds": self.settings.retry_seconds}
        self._set_health("critical", **{k: v for k, v in detail.items() if k != "status"})
        if first:
            self._publish("health.audit", detail, "critical")
            self._tasks.append(asyncio.create_task(self._retry_loop(), name="audit-retry"))

    async def _retry_loop(self) -> None:
        """Every retry_seconds: once the reserve is whole again (and some room beyond), recover."""
        loop = asyncio.get_running_loop()
        while self.disk_full and not self.failed and not self.closed:
            await asyncio.sleep(self.settings.retry_seconds)
            state = self.disk_full
            if not state or self.closed:
                return
            try:
                back = await loop.run_in_executor(self._ex, self._space_back)
            except OSError as e:
                self._on_fatal(f"reserve: {e}")
                return
            if back:
                self.disk_full = None
                self._recovered(state)
                self._enqueue(self._disk_full_event(state), wait=False)

    def _space_back(self) -> bool:
        used = self.store.reserve_used
        if self.store.free_bytes() < _HEADROOM or not self.store.regrow():
            return False
        self._reserve_used_total = used
        return True

    def _disk_full_event(self, state: _DiskFullState) -> dict[str, Any]:
        return {"kind": "audit.disk_full", "since": state.since, "until": self.clock(), "refused": state.refused,
                "reserve_used": self._reserve_used_total, "dropped_internal": state.dropped,
                "first_seq": state.first_seq, "mode": self.settings.fail_mode}

    def _recovered(self, state: _DiskFullState) -> None:
        self._set_health("ok")
        self._publish("health.audit", {"status": "ok", "recovered": True, "refused": state.refused}, "info")

    # -- checkpoints and retention ---------------------------------------------------------------
    def _checkpoint_sync(self, reason: str, seq: int | None = None, digest: bytes | None = None,
                         file: str | None = None, ts: int | None = None, **extra: int) -> dict[str, Any] | None:
        if self._key is None:
            return None
        if seq is None:
            seq, digest, file = self.durable.seq, self.durable.hash, self.durable.file
        if not seq:
            return None
        assert digest is not None
        c = cp.make(self._key, seq, digest, self.clock() if ts is None else ts, reason, file, **extra)
        cp.append(self.audit_dir / cp.LOG_NAME, c)
        if reason != "prune":
            self._last_cp = max(self._last_cp, seq)
        return c

    async def checkpoint(self, reason: str = "manual") -> dict[str, Any] | None:
        """Write a signed checkpoint of the durable head now."""
        loop = asyncio.get_running_loop()
        for _ in range(200):
            if not self._queue or self.disk_full or self.failed:
                break
            await asyncio.sleep(0.01)
        return await loop.run_in_executor(self._ex, self._checkpoint_sync, reason)

    async def prune(self) -> list[str]:
        """Delete day files past retention, on the log's own time (`retention.plan`), each one
        recorded first (`audit.pruned`), then anchored by a signed prune checkpoint of its last
        record, then deleted; a checkpoint of the head covers the prune records afterwards."""
        if self._key is None:
            return []     # never delete history without a signed anchor for what follows
        loop = asyncio.get_running_loop()
        wall = self.clock()
        names = [p.name for p in day_files(self.audit_dir)]
        pl = retention.plan(names, self.durable.file, wall, self._anchor, _boot_s(), self.settings.retention_days)
        if pl.clock_disagrees and not self._skew_reported:
            self._skew_reported = True
            data = {"wall_us": wall, "log_us": wall - pl.skew_us, "skew_seconds": round(pl.skew_us / 1e6, 3),
                    "note": "the wall clock disagrees with the log's last record plus uptime (a clock jump or a "
                            "downtime): retention runs on the log's time"}
            self._publish("audit.clock_skew", data, "warning")
            await self.record({"kind": "audit.clock_skew", **data})
        pruned = []
        for name in pl.files:
            last = await loop.run_in_executor(self._ex, last_record, self.audit_dir / name)
            if last is None:
                print(f"stockade: audit retention: {name} kept (empty, or a record does not decode; run "
                      "`stockade audit verify`)", file=sys.stderr)
                continue
            seq = await self.record({"kind": "audit.pruned", "file": name, "last_seq": last["seq"],
                                     "last_hash": last["hash"], "cutoff": pl.cutoff,
                                     "retention_days": self.settings.retention_days,
                                     "trusted_now": pl.trusted_us, "wall_now": wall})
            await loop.run_in_executor(self._ex, self._prune_file_sync, name, last, seq, pl.trusted_us)
            self.indexer.prune(name, last["seq"])
            self._publish("audit.pruned", {"file": name, "last_seq": last["seq"], "record": seq}, "info")
            pruned.append(name)
        if pruned:
            await self.checkpoint("after_prune")
        return pruned

    def _prune_file_sync(self, name: str, last: dict[str, Any], record_seq: int, now_us: int) -> None:
        self._checkpoint_sync("prune", last["seq"], last["hash"], name, ts=now_us,
                              retention_days=self.settings.retention_days, record=record_seq)
        (self.audit_dir / name).unlink()
        cp.fsync_dir(self.audit_dir)

    async def _retention_loop(self) -> None:
        while not self.closed:
            try:
                await self.prune()
            except Exception as e:
                print(f"stockade: audit retention: {e}", file=sys.stderr)
            await asyncio.sleep(3600)

    # -- reporting -------------------------------------------------------------------------------
    def _set_health(self, status: str, **extra: Any) -> None:
        if self.health is not None:
            self.health["audit"] = {"status": status, "seq": self.durable.seq, **extra}

    def _publish(self, kind: str, data: dict[str, Any], severity: str) -> None:
        if self.bus is not None:
            with contextlib.suppress(Exception):
                self.bus.publish(kind, data, severity)

    def status(self) -> dict[str, Any]:
        return {"seq": self.durable.seq, "hash": self.durable.hash.hex(), "file": self.durable.file,
                "size": self.durable.size, "queued": len(self._queue), "failed": self.failed,
                "disk_full": bool(self.disk_full), "last_checkpoint": self._last_cp, **self.stats,
                "index": self.indexer.health(self.durable.seq),
                **({"forward": {f.sink.name: f.status() for f in self.forwarders}} if self.forwarders else {})}


# -- offline writers ---------------------------------------------------------------------------------
def append_locked(audit_dir: Path, keys_dir: Path | None, record: dict[str, Any] | None,
                  checkpoint_every: int = 1000, clock: Any = now_us, *, force_checkpoint: bool = False) -> int:
    """Append one record (None: none) while holding audit/.lock (no server running); the head seq.

    `force_checkpoint` signs the head afterwards whatever `checkpoint_every` says.
    """
    store = Store(audit_dir)
    head, torn = store.recover()
    try:
        todo = []
        if torn:
            todo.append({"kind": "audit.torn_recovered", **torn})
        if record is not None:
            todo.append(record)
        index = None
        with contextlib.suppress(sqlite3.Error):
            index = Index(audit_dir)
            index.catch_up()
        for rec in todo:
            ts = clock()
            day = day_of(ts)
            if head.file and day < head.file[:10]:
                day = head.file[:10]
            body, digest = build(rec, head.seq + 1, ts, head.hash)
            off = store.append(day, [frame(body)])[0]
            head = Head(head.seq + 1, digest, f"{day}.log", off + 4 + len(body))
            if index is not None:
                with contextlib.suppress(sqlite3.Error):
                    index.add([(head.seq, ts, head.file, off, len(body), *row_fields(rec))])
        if index is not None:
            index.close()
        last = cp.latest(audit_dir / cp.LOG_NAME)
        last_seq = last["seq"] if last else 0
        crossed = head.seq // checkpoint_every > last_seq // checkpoint_every
        if keys_dir is not None and (keys_dir / cp.KEY_NAME).exists() and head.seq and (crossed or force_checkpoint):
            cp.append(audit_dir / cp.LOG_NAME, cp.make(cp.load_private(keys_dir), head.seq, head.hash, clock(),
                                                       "manual" if force_checkpoint else "periodic", head.file))
        return head.seq
    finally:
        store.close()


def append_offline_or_admin(home: Any, record: dict[str, Any], timeout: float = 30.0) -> int:
    """Record an event from a CLI command: through the running server, or directly under the lock."""
    from stockade.audit.record import jsonable
    from stockade.core import admin

    audit_dir: Path = home.audit_dir
    audit_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        if home.admin_sock.exists():     # (a bare connect probe would make the server log an error)
            try:
                return int(admin.call(home, "audit.append", {"record": jsonable(record)})["seq"])
            except StockadeError as e:
                if e.type != "Unreachable":
                    raise
        fd = try_lock(audit_dir)
        if fd is not None:
            try:
                try:
                    every = home.config().audit.checkpoint_every
                except Exception:
                    every = 1000
                try:
                    return append_locked(audit_dir, home.keys, record, every)
                except AuditDamaged as e:
                    raise err("Internal", f"audit log damaged: {e} (run stockade audit verify)") from None
                except (DiskFull, WriterFailed) as e:
                    raise err("Internal", f"cannot write the audit log: {e}") from None
            finally:
                unlock(fd)
        if time.monotonic() > deadline:
            raise err("Internal", f"timed out waiting for {audit_dir / LOCK_NAME}")
        time.sleep(0.05)
