"""`audit/index.db`: a SQLite index (WAL) of the log by time, agent, capability and outcome.

While the gateway runs, the index is kept by a child process (`IndexProcess`, running this module):
it tails the day files up to the writer's durable end, so its SQLite inserts and CBOR decoding run
on its own GIL (and the machine's other core), never on the gateway's event loop. A dead or slow
indexer never touches a call: readers catch the index up from the log before they query.

Derived data: the CBOR day files are the source of truth, so `synchronous=NORMAL` is enough
(a power loss may roll back the last index transactions; `catch_up` re-indexes past the high-water
mark on start) and `stockade audit reindex` rebuilds it from scratch. Queries return positions;
records are read back from the log files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2

from stockade.audit.record import FRAME, MAX_FRAME

if TYPE_CHECKING:        # (imported where used: the indexer process starts without asyncio's ~60 ms)
    import asyncio
    import subprocess

INDEX_NAME = "index.db"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS records (
        seq INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        file TEXT NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        kind TEXT NOT NULL,
        agent TEXT,
        capability TEXT,
        status TEXT,
        phase TEXT,
        call TEXT,
        tier TEXT,
        session TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS records_ts ON records(ts)",
    "CREATE INDEX IF NOT EXISTS records_agent ON records(agent, ts)",
    "CREATE INDEX IF NOT EXISTS records_capability ON records(capability, ts)",
    "CREATE INDEX IF NOT EXISTS records_status ON records(status, ts)",
    """CREATE TABLE IF NOT EXISTS undecodable (
        file TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, after_seq INTEGER, reason TEXT,
        PRIMARY KEY (file, offset)
    )""",
)
Row = tuple[Any, ...]


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def row_fields(rec: dict[str, Any]) -> tuple[Any, ...]:
    """(kind, agent, capability, status, phase, call, tier, session) of a record (or of writer input)."""
    o, d = rec.get("outcome"), rec.get("decision")
    outcome: dict[str, Any] = o if isinstance(o, dict) else {}
    decision: dict[str, Any] = d if isinstance(d, dict) else {}
    return (_text(rec.get("kind")) or "call", _text(rec.get("agent")), _text(rec.get("capability")),
            _text(outcome.get("status")), _text(rec.get("phase")), _text(rec.get("call")), _text(decision.get("tier")),
            _text(rec.get("session")))


class Index:
    def __init__(self, audit_dir: Path):
        self.audit_dir = audit_dir
        self.bad: list[BadFrame] = []
        path = audit_dir / INDEX_NAME
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        self.conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA journal_size_limit=4194304")   # the WAL never keeps more than 4 MiB
        for stmt in SCHEMA:
            self.conn.execute(stmt)
        self.stale = self._migrate()
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.chmod(side, 0o600)

    def _migrate(self) -> bool:
        """Add columns an older index lacks; True when its rows must be rebuilt to fill them."""
        cols = {r[1] for r in self.conn.execute("PRAGMA table_info(records)")}
        stale = False
        if "session" not in cols:
            self.conn.execute("ALTER TABLE records ADD COLUMN session TEXT")
            stale = self.conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None
        self.conn.execute("CREATE INDEX IF NOT EXISTS records_session ON records(session, seq)")
        # Gone: a sixth secondary index, for the hourly prune alone, cost ~30% of every insert
        # (the prune deletes by seq range now).
        self.conn.execute("DROP INDEX IF EXISTS records_file")
        return stale

    def close(self) -> None:
        self.conn.close()

    def add(self, rows: list[Row]) -> None:
        """rows: (seq, ts, file, offset, length, kind, agent, capability, status, phase, call, tier, session)."""
        if not rows:
            return
        # Plain INSERT first: with six secondary indexes SQLite's REPLACE costs two to three times
        # the CPU of an INSERT, and the writer's rows are new seqs. A seq already present (a
        # catch-up racing the writer, a re-scan) rolls back and takes the REPLACE path: same rows.
        try:
            with self._tx():
                self.conn.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.IntegrityError:
            with self._tx():
                self.conn.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def high_water(self) -> tuple[int, str, int, int] | None:
        r = self.conn.execute("SELECT seq, file, offset, length FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(r[0]), str(r[1]), int(r[2]), int(r[3])) if r else None

    def prune_file(self, name: str, last_seq: int | None = None) -> None:
        """Unindex a deleted day file. `last_seq` (its last record) bounds the rows looked at: the
        files pruned are the oldest, so all their rows lie at or below it (else a full scan)."""
        with self._tx():
            if last_seq is None:
                self.conn.execute("DELETE FROM records WHERE file=?", (name,))
            else:
                self.conn.execute("DELETE FROM records WHERE seq <= ? AND file=?", (last_seq, name))
            self.conn.execute("DELETE FROM undecodable WHERE file=?", (name,))

    # -- (re)building -----------------------------------------------------------------------
    def catch_up(self, limit: tuple[str, int] | None = None) -> int:
        """Index records past the high-water mark; rebuild if the mark no longer matches the log.

        `limit` (file, size): read nothing past it (the indexer process passes the writer's
        durable end, so a batch being written, or rolled back on a full disk, is never indexed)."""
        from stockade.audit.verify import day_files

        if self.stale:
            self.stale = False
            return self.rebuild(limit=limit)
        hw = self.high_water()
        files = _upto(day_files(self.audit_dir), limit)
        if hw is None:
            return self._scan(files, None, 0, limit=limit)
        seq, fname, offset, length = hw
        path = self.audit_dir / fname
        try:
            rec = _read_at(path, offset, length)
        except (OSError, ValueError):
            rec = None
        if not isinstance(rec, dict) or rec.get("seq") != seq:
            return self.rebuild(limit=limit)
        return self._scan([p for p in files if p.name >= fname], (fname, offset + 4 + length), seq, limit=limit)

    def rebuild(self, progress: Callable[[int, int], None] | None = None,
                limit: tuple[str, int] | None = None) -> int:
        from stockade.audit.verify import day_files

        with self._tx():
            self.conn.execute("DELETE FROM records")
            self.conn.execute("DELETE FROM undecodable")
        return self._scan(_upto(day_files(self.audit_dir), limit), None, 0, progress, limit)

    def _scan(self, files: list[Path], start: tuple[str, int] | None, after_seq: int,
              progress: Callable[[int, int], None] | None = None, limit: tuple[str, int] | None = None) -> int:
        """Index the records of `files`; undecodable frames go to the `undecodable` table (and
        `self.bad`) so every later query reports them. Returns the number of good records.
        `progress(done, total)` (bytes of day files) is told every batch (the CLI's bar)."""
        count = 0
        batch: list[Row] = []
        total, before = (sum(_size(p) for p in files), 0) if progress is not None else (0, 0)
        for p in files:
            off = start[1] if start and p.name == start[0] else 0
            end = limit[1] if limit and p.name == limit[0] else None
            if end is not None and end <= off:
                continue
            bad: list[BadFrame] = []
            for offset, length, rec in iter_records(p, off, end, bad=bad):
                if rec.get("seq", 0) <= after_seq:
                    continue
                batch.append(make_row(rec, p.name, offset, length))
                count += 1
                if len(batch) >= 5000:
                    self.add(batch)
                    batch = []
                    if progress is not None:
                        progress(before + offset, total)
            if bad:
                with self._tx():
                    self.conn.executemany("INSERT OR REPLACE INTO undecodable VALUES (?,?,?,?,?)",
                                          [(b.file, b.offset, b.length, b.after_seq, b.reason) for b in bad])
            self.bad += bad
            before += _size(p) if progress is not None else 0
        self.add(batch)
        return count

    def undecodable(self) -> list[BadFrame]:
        """Frames of the log no reader could decode, as found when indexing."""
        rows = self.conn.execute("SELECT file, offset, length, reason, after_seq FROM undecodable "
                                 "ORDER BY file, offset").fetchall()
        return [BadFrame(f, o, ln, r, a) for f, o, ln, r, a in rows]

    # -- queries ----------------------------------------------------------------------------
    def query(self, *, agent: str | None = None, capability: str | None = None, outcome: str | None = None,
              kind: str | None = None, since_us: int | None = None, until_us: int | None = None,
              limit: int = 100, newest_first: bool = False, session: str | None = None,
              call: str | None = None) -> list[tuple[str, int, int]]:
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("agent", agent), ("capability", capability), ("status", outcome), ("kind", kind),
                         ("session", session), ("call", call)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since_us is not None:
            where.append("ts >= ?")
            args.append(since_us)
        if until_us is not None:
            where.append("ts < ?")
            args.append(until_us)
        sql = "SELECT file, offset, length FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(int(limit))
        return [(str(f), int(o), int(n)) for f, o, n in self.conn.execute(sql, args)]


def _upto(files: list[Path], limit: tuple[str, int] | None) -> list[Path]:
    return files if limit is None else [p for p in files if p.name <= limit[0]]


def make_row(rec: dict[str, Any], file: str, offset: int, length: int) -> Row:
    return (rec.get("seq"), rec.get("ts"), file, offset, length, *row_fields(rec))


def _read_at(path: Path, offset: int, length: int) -> Any:
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(4)
        if len(head) != 4 or FRAME.unpack(head)[0] != length:
            raise ValueError("index points at a different frame")
        return cbor2.loads(f.read(length))


def read_record(audit_dir: Path, file: str, offset: int, length: int) -> dict[str, Any] | None:
    try:
        rec = _read_at(audit_dir / file, offset, length)
    except (OSError, ValueError, cbor2.CBORError):
        return None
    return rec if isinstance(rec, dict) else None


@dataclass(frozen=True)
class BadFrame:
    """A frame a reader could not decode (or where the framing itself breaks)."""

    file: str
    offset: int
    length: int
    reason: str
    after_seq: int | None

    def message(self) -> str:
        return (f"{self.file} offset {self.offset} (after seq {self.after_seq if self.after_seq is not None else '?'}):"
                f" a record could not be decoded ({self.reason}); run `stockade audit verify`")


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def iter_records(path: Path, start: int = 0, end: int | None = None,
                 bad: list[BadFrame] | None = None) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(offset, length, record) of the decodable records of a day file.

    A frame that does not decode is appended to `bad` and skipped: the records after it still
    come (the length prefix still frames them). Bytes that cannot be framed (a zero or huge
    length) end the file and are appended to `bad` too; an incomplete last frame is not
    reported (a write in progress, or a torn tail that `verify` and the next start deal with).
    Reads from `start` only (so `tail -f` polling a big day file stays cheap).
    """
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(end - start, 0))
    except FileNotFoundError:
        return
    n = len(data)
    o = 0
    seq: int | None = None
    while o + 4 <= n:
        ln = FRAME.unpack_from(data, o)[0]
        if ln == 0 or ln > MAX_FRAME:
            if bad is not None:
                bad.append(BadFrame(path.name, start + o, n - o, "the framing is broken: the rest of the file "
                                    "cannot be read as records", seq))
            return
        if o + 4 + ln > n:
            return
        try:
            rec = cbor2.loads(data[o + 4:o + 4 + ln])
            why = "" if isinstance(rec, dict) else "not a CBOR map"
        except Exception as e:       # RecursionError included: nesting past the decoder's limit
            rec, why = None, str(e)[:120] or type(e).__name__
        if why:
            if bad is not None:
                bad.append(BadFrame(path.name, start + o, ln, why, seq))
        else:
            s = rec.get("seq")
            seq = s if type(s) is int else seq
            yield start + o, ln, rec
        o += 4 + ln


def open_index(audit_dir: Path) -> Index | None:
    """The index, rebuilt from scratch if its file is damaged (derived data never blocks the log)."""
    try:
        return Index(audit_dir)
    except sqlite3.Error as e:
        print(f"stockade: audit index unusable ({e}); rebuilding it", file=sys.stderr)
    for suffix in ("", "-wal", "-shm"):
        p = audit_dir / (INDEX_NAME + suffix)
        with contextlib.suppress(FileNotFoundError):
            p.rename(p.with_name(f"{p.name}.damaged-{int(time.time())}"))
    try:
        return Index(audit_dir)
    except sqlite3.Error as e:
        print(f"stockade: audit index unavailable ({e}); queries need `stockade audit reindex`", file=sys.stderr)
        return None


# -- the indexer process ------------------------------------------------------------------------------
# Gateway -> indexer (stdin), one line each:  "H <seq> <file> <size>"  the writer's durable end;
#                                             "P <file> <last seq>"    a day file was pruned.
# Indexer -> gateway (stdout):                "I <seq>"  indexed through seq (first: ready);
#                                             "E <text>"  an error.
# EOF on stdin (the gateway stopping, or dying): index up to the last durable end told, then exit.

def parse_lines(buf: bytes) -> tuple[list[list[str]], bytes]:
    """The complete lines of `buf`, split into words, and the incomplete rest (pure)."""
    *lines, rest = buf.split(b"\n")
    return [ln.decode("utf-8", "replace").split(" ") for ln in lines if ln], rest


def apply_messages(msgs: list[list[str]], limit: tuple[str, int] | None,
                   prunes: list[tuple[str, int]]) -> tuple[str, int] | None:
    """Fold messages into the newest durable end (returned) and the files to unindex (appended)."""
    for m in msgs:
        if m[0] == "H" and len(m) == 4 and m[3].isdigit():
            limit = (m[2], int(m[3]))
        elif m[0] == "P" and len(m) == 3 and m[2].isdigit():
            prunes.append((m[1], int(m[2])))
    return limit


def run_indexer(audit_dir: Path, inp: int = 0, out: int = 1) -> int:
    """The indexer process: index each durable end the gateway tells, until EOF on `inp`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a ^C to the gateway's group: finish on EOF instead
    idx = open_index(audit_dir)
    if idx is None:
        return 1
    hw = idx.high_water()
    _say(out, f"I {hw[0] if hw else 0}")         # ready: where it starts from (the lag shows at once)
    limit: tuple[str, int] | None = None
    done: tuple[str, int] | None = None
    buf, eof = b"", False
    while not eof:
        chunk = os.read(inp, 65536)
        eof = not chunk
        msgs, buf = parse_lines(buf + chunk)
        prunes: list[tuple[str, int]] = []
        limit = apply_messages(msgs, limit, prunes)
        try:
            for name, last_seq in prunes:
                idx.prune_file(name, last_seq)
            if limit is not None and (prunes or limit != done):
                idx.catch_up(limit)
                done = limit
                hw = idx.high_water()
                _say(out, f"I {hw[0] if hw else 0}")
        except (sqlite3.Error, OSError) as e:   # derived data: the next message (or a reader) retries
            _say(out, f"E {type(e).__name__}: {e}"[:500])
            if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
                return 1                        # a damaged file: the gateway restarts us (open_index repairs)
    idx.close()
    return 0


def _say(out: int, line: str) -> None:
    with contextlib.suppress(BrokenPipeError):  # the gateway is gone: EOF on stdin ends us soon
        os.write(out, (line.replace("\n", " ") + "\n").encode())


class IndexProcess:
    """The gateway's side of the indexer process: start, tell, watch, restart, stop.

    Nothing here can block the event loop: the pipe to the child is non-blocking (a message that
    does not fit is sent again on the next tick), its answers come through `add_reader`, and
    waiting for it to exit runs in a thread.
    """

    STALL_SECONDS = 60.0

    def __init__(self, audit_dir: Path):
        self.audit_dir = audit_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.indexed: int | None = None        # seq the child last reported indexed through
        self.told: tuple[int, str, int] | None = None
        self.restarts = 0
        self.failures = 0                      # exits in a row without progress (the restart backoff)
        self.error: str | None = None
        self.retry_at = 0.0
        self.progress_at = time.monotonic()
        self._prunes: list[str] = []           # "<file> <last seq>" still to tell
        self._buf = b""
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        import asyncio
        import subprocess

        self._loop = asyncio.get_running_loop()
        try:
            self.proc = subprocess.Popen([sys.executable, "-I", "-B", "-m", "stockade.audit.index",
                                          str(self.audit_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as e:
            self._gone(f"cannot start the indexer: {e}")
            return
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._loop.add_reader(self.proc.stdout.fileno(), self._on_output)
        self.told, self._buf = None, b""
        self.progress_at = time.monotonic()

    def _on_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._drop_reader()
            return
        msgs, self._buf = parse_lines(self._buf + chunk)
        for m in msgs:
            if m[0] == "I" and len(m) == 2 and m[1].isdigit():
                self.indexed, self.error, self.failures = int(m[1]), None, 0
                self.progress_at = time.monotonic()
            elif m[0] == "E":
                self.error = " ".join(m[1:])

    def _drop_reader(self) -> None:
        if self.proc is not None and self.proc.stdout is not None and self._loop is not None:
            self._loop.remove_reader(self.proc.stdout.fileno())

    def _send(self, line: str) -> bool:
        """One message (shorter than PIPE_BUF: written whole or not at all); False if it did not fit."""
        if self.proc is None or self.proc.stdin is None:
            return False
        try:
            os.write(self.proc.stdin.fileno(), (line + "\n").encode())
        except (BlockingIOError, BrokenPipeError):
            return False                      # full: next tick; gone: `tick` sees the exit
        return True

    def prune(self, name: str, last_seq: int) -> None:
        self._prunes.append(f"{name} {last_seq}")

    def tick(self, seq: int, file: str | None, size: int, paused: bool) -> None:
        """Called a few times a second: restart a dead child, tell it the new durable end."""
        if self.proc is not None and self.proc.poll() is not None:
            self._reap()
        if self.proc is None:
            if time.monotonic() >= self.retry_at:
                self.start()
            if self.proc is None:
                return
        while self._prunes and self._send(f"P {self._prunes[0]}"):
            del self._prunes[0]
        head = (seq, file or "", size)
        if not paused and file and head != self.told and self._send(f"H {seq} {file} {size}"):
            self.told = head

    def _reap(self) -> None:
        assert self.proc is not None
        self._drop_reader()
        code = self.proc.returncode
        self._close_pipes()
        self.proc = None
        self.restarts += 1
        self._gone(f"the indexer exited (status {code}){': ' + self.error if self.error else ''}")

    def _gone(self, why: str) -> None:
        self.failures += 1
        self.error = why
        self.retry_at = time.monotonic() + min(2.0 ** (self.failures - 1), 60.0)
        print(f"stockade: audit index: {why}; restarting it (queries catch up from the log meanwhile)",
              file=sys.stderr)

    def _close_pipes(self) -> None:
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    if f is not None:
                        f.close()

    def health(self, durable_seq: int) -> dict[str, Any]:
        lag = None if self.indexed is None else max(durable_seq - self.indexed, 0)
        stalled = bool(lag) and time.monotonic() - self.progress_at > self.STALL_SECONDS
        running = self.proc is not None
        out: dict[str, Any] = {"status": "ok" if running and not stalled else "degraded", "running": running,
                               "indexed_seq": self.indexed, "lag_records": lag, "restarts": self.restarts}
        if self.proc is not None:
            out["pid"] = self.proc.pid
        if self.error:
            out["error"] = self.error
        if stalled:
            out["stalled_seconds"] = round(time.monotonic() - self.progress_at, 1)
        return out

    async def stop(self, seq: int, file: str | None, size: int, *, final: bool, timeout: float = 30.0) -> None:
        """Tell the last durable end (unless `final` is False: the disk is full), close the pipe
        (EOF: the child indexes up to it and exits) and wait; kill it after `timeout`."""
        import asyncio
        import subprocess

        proc = self.proc
        if proc is None:
            return
        while self._prunes and self._send(f"P {self._prunes[0]}"):
            del self._prunes[0]
        if final and file:
            self._send(f"H {seq} {file} {size}")         # (a child stuck for minutes: readers catch up)
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()                                   # derived data: a reader or the next start catches up
            await loop.run_in_executor(None, proc.wait)
        self._on_output_rest()
        self._drop_reader()
        self._close_pipes()
        self.proc = None

    def _on_output_rest(self) -> None:
        with contextlib.suppress(OSError, AssertionError):
            self._on_output()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m stockade.audit.index AUDIT_DIR (run by the gateway)", file=sys.stderr)
        return 2
    return run_indexer(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
