"""`audit/index.db`: a SQLite index (WAL) of the log by time, agent, capability and outcome.

Derived data: the CBOR day files are the source of truth, so `synchronous=NORMAL` is enough
(a power loss may roll back the last index transactions; `catch_up` re-indexes past the high-water
mark on start) and `stockade audit reindex` rebuilds it from scratch. Queries return positions;
records are read back from the log files.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from stockade.audit.record import FRAME, MAX_FRAME

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
    "CREATE INDEX IF NOT EXISTS records_file ON records(file)",
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

    def prune_file(self, name: str) -> None:
        with self._tx():
            self.conn.execute("DELETE FROM records WHERE file=?", (name,))
            self.conn.execute("DELETE FROM undecodable WHERE file=?", (name,))

    # -- (re)building -----------------------------------------------------------------------
    def catch_up(self) -> int:
        """Index records past the high-water mark; rebuild if the mark no longer matches the log."""
        from stockade.audit.verify import day_files

        if self.stale:
            self.stale = False
            return self.rebuild()
        hw = self.high_water()
        files = day_files(self.audit_dir)
        if hw is None:
            return self._scan(files, None, 0)
        seq, fname, offset, length = hw
        path = self.audit_dir / fname
        try:
            rec = _read_at(path, offset, length)
        except (OSError, ValueError):
            rec = None
        if not isinstance(rec, dict) or rec.get("seq") != seq:
            return self.rebuild()
        return self._scan([p for p in files if p.name >= fname], (fname, offset + 4 + length), seq)

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        from stockade.audit.verify import day_files

        with self._tx():
            self.conn.execute("DELETE FROM records")
            self.conn.execute("DELETE FROM undecodable")
        return self._scan(day_files(self.audit_dir), None, 0, progress)

    def _scan(self, files: list[Path], start: tuple[str, int] | None, after_seq: int,
              progress: Callable[[int, int], None] | None = None) -> int:
        """Index the records of `files`; undecodable frames go to the `undecodable` table (and
        `self.bad`) so every later query reports them. Returns the number of good records.
        `progress(done, total)` (bytes of day files) is told every batch (the CLI's bar)."""
        count = 0
        batch: list[Row] = []
        total, before = (sum(_size(p) for p in files), 0) if progress is not None else (0, 0)
        for p in files:
            off = start[1] if start and p.name == start[0] else 0
            bad: list[BadFrame] = []
            for offset, length, rec in iter_records(p, off, bad=bad):
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
