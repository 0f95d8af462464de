"""`stockade audit verify|query|session|tail|export|reindex|replay|checkpoint export` (docs/design.md "Formats").

All of them work on a stopped home; with a server running, `verify` stops at the durable end
the server reports (a batch being written is not a torn record) and `checkpoint export --fresh`
asks the server to sign its current head.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from stockade.audit import checkpoint as cp
from stockade.audit.index import BadFrame, Index, iter_records, read_record
from stockade.audit.record import jsonable
from stockade.audit.verify import day_files, verify_dir
from stockade.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    emit,
    fail,
    fail_error,
    home_option,
    json_option,
    need_home,
    sanitize,
)
from stockade.cli.progress import tracked
from stockade.core.errors import StockadeError
from stockade.core.home import Home


def _parse_time(v: str | None, what: str) -> int | None:
    """YYYY-MM-DD or an ISO 8601 time (UTC unless it says otherwise) -> µs."""
    if v is None:
        return None
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{what}: expected a date like 2026-11-22 or 2026-11-22T10:00:00Z, got {v!r}", EXIT_USAGE)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def _iso(ts: Any) -> str:
    if not isinstance(ts, int):
        return "?"
    return datetime.fromtimestamp(ts / 1e6, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(rec: dict[str, Any]) -> str:
    kind = rec.get("kind")
    if kind:
        rest = {k: v for k, v in rec.items() if k not in ("seq", "ts", "prev", "hash", "kind")}
        return sanitize(f"{rec.get('seq'):>8} {_iso(rec.get('ts'))} {kind} {json.dumps(jsonable(rest), default=str)}")
    o, d = rec.get("outcome"), rec.get("decision")
    outcome: dict[str, Any] = o if isinstance(o, dict) else {}
    decision: dict[str, Any] = d if isinstance(d, dict) else {}
    status = str(outcome.get("status", "?"))
    if outcome.get("error"):
        status += f" ({outcome['error']})"
    return sanitize(f"{rec.get('seq'):>8} {_iso(rec.get('ts'))} {rec.get('agent')} {rec.get('capability')} "
                    f"[{rec.get('phase')}] {decision.get('tier')} -> {status} {rec.get('duration_us')}us")


def _index(h: Home) -> Index:
    from stockade.audit.index import open_index

    idx = open_index(h.audit_dir)
    if idx is None:
        fail(f"cannot open or recreate {h.audit_dir / 'index.db'}", EXIT_CHECK_FAILED)
    return idx


def _live_limit(h: Home) -> tuple[str, int] | None:
    from stockade.core import admin

    if not h.admin_sock.exists():
        return None
    try:
        head = admin.call(h, "audit.head")
    except StockadeError:
        return None
    if head.get("file"):
        return (head["file"], int(head["size"]))
    return None


@click.group()
def audit() -> None:
    """Inspect and verify the tamper-evident audit log."""


@audit.command()
@click.option("--since", help="Verify day files from this date (YYYY-MM-DD) on.")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(dir_okay=False, exists=True),
              help="An exported checkpoint (audit checkpoint export) the log must still contain.")
@home_option
@json_option
def verify(since: str | None, checkpoint_file: str | None, home: str | None, as_json: bool) -> None:
    """Verify the hash chain, signatures and checkpoints; exit 0 only if intact."""
    h = need_home(home)
    if since is not None:
        _parse_time(since, "--since")
        since = since[:10]
    extra: list[dict[str, Any]] = []
    notes: list[str] = []
    pub = cp.load_public(h.keys)
    if checkpoint_file:
        entries = _read_checkpoints(Path(checkpoint_file))
        for c in entries:
            try:
                cp.check(c, None)
            except ValueError as e:
                fail(f"{checkpoint_file}: {e}", EXIT_CHECK_FAILED, as_json, cause="checkpoint_invalid")
            if pub is not None and c.get("key") and base64.b64decode(c["key"]) != pub:
                notes.append(f"the checkpoint for seq {c['seq']} was signed by a different key than this home's "
                             "audit key")
            extra.append(c)
    with tracked("audit verify", as_json) as t:
        r = verify_dir(h.audit_dir, pub, since=since, extra_checkpoints=extra, limit=_live_limit(h), progress=t)
    r.notes.extend(notes)
    if checkpoint_file and not any(f.cause.startswith("checkpoint") for f in r.findings):
        r.notes.append(f"the log still contains the exported checkpoint(s) for seq "
                       f"{', '.join(str(c['seq']) for c in extra)}")
    out = r.to_dict()

    def render(d: dict[str, Any]) -> None:
        if d["ok"]:
            click.echo(f"intact: {d['records']} records in {d['files']} files, seq {d['first_seq']}..{d['last_seq']}"
                       f" (start: {d['start']})")
        else:
            click.echo(f"NOT INTACT ({d['status']}): {len(d['findings'])} finding(s)")
            for f in d["findings"]:
                click.echo(sanitize(f"  {f['file']} seq {f['seq']}: {f['cause']}: {f['detail']}"))
        if d["anchored_through"]:
            click.echo(f"anchored by signed checkpoints through seq {d['anchored_through']}; "
                       f"unanchored after")
        else:
            click.echo("no signed checkpoint covers the log yet")
        for n in d["notes"]:
            click.echo(sanitize(f"note: {n}"))

    emit(out, as_json, render)
    sys.exit(0 if r.ok else EXIT_CHECK_FAILED)


def _read_checkpoints(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(errors="replace").strip()
    try:
        v = json.loads(text)
        items = v if isinstance(v, list) else [v]
    except ValueError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            fail(f"{path}: not a checkpoint (expected the JSON printed by `audit checkpoint export`)", EXIT_USAGE)
    if not items or not all(isinstance(i, dict) for i in items):
        fail(f"{path}: not a checkpoint", EXIT_USAGE)
    return items


@audit.command()
@click.option("--agent")
@click.option("--capability")
@click.option("--outcome", help="ok | error | started")
@click.option("--kind", help="call, or an event kind such as agent.created")
@click.option("--session", help="Records of one session (see `audit session` for its timeline).")
@click.option("--since", help="Date or ISO time (UTC).")
@click.option("--until", help="Date or ISO time (UTC), exclusive.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@home_option
@json_option
def query(agent: str | None, capability: str | None, outcome: str | None, kind: str | None, session: str | None,
          since: str | None, until: str | None, limit: int, home: str | None, as_json: bool) -> None:
    """Search the log through the index (by time, agent, capability, outcome, session)."""
    h = need_home(home)
    idx = _index(h)
    try:
        with tracked("audit query: indexing new records", as_json):
            idx.catch_up()
        hits = idx.query(agent=agent, capability=capability, outcome=outcome, kind=kind, session=session,
                         since_us=_parse_time(since, "--since"), until_us=_parse_time(until, "--until"), limit=limit)
        bad = idx.undecodable()
    finally:
        idx.close()
    recs = []
    for hit in hits:
        r = read_record(h.audit_dir, *hit)
        if r is None:
            bad.append(BadFrame(hit[0], hit[1], hit[2], "the index points at it but it does not decode", None))
        else:
            recs.append(r)
    def render(_d: Any) -> None:
        for r in recs:
            click.echo(_line(r))

    emit({"records": [jsonable(r) for r in recs]}, as_json, render)
    _exit_if_bad(bad)


@audit.command("session")
@click.argument("session_id")
@home_option
@json_option
def session_cmd(session_id: str, home: str | None, as_json: bool) -> None:
    """Every call of one session in order: decision, approval, outcome, duration."""
    from stockade.audit import session as sess

    h = need_home(home)
    idx = _index(h)
    try:
        with tracked("audit session: indexing new records", as_json):
            idx.catch_up()
        recs, bad = sess.load(idx, h.audit_dir, session_id)
        bad = idx.undecodable() + bad
    finally:
        idx.close()
    entries = sess.timeline(recs)
    if not entries and not bad:
        fail(f"no records for session {session_id!r}", EXIT_CHECK_FAILED, as_json)
    emit({"session": session_id, "calls": entries}, as_json, _render_session)
    _exit_if_bad(bad)


def _render_session(d: dict[str, Any]) -> None:
    click.echo(sanitize(f"session {d['session']}: {len(d['calls'])} entr{'y' if len(d['calls']) == 1 else 'ies'}"))
    for e in d["calls"]:
        if "kind" in e:
            click.echo(sanitize(f"{e['seq']:>8} {_iso(e['ts'])} {e.get('agent')} {e['kind']}"))
            continue
        dec = e.get("decision") or {}
        out = e.get("outcome") or {}
        status = str(out.get("status", "?")) + (f" ({out['error']})" if out.get("error") else "")
        appr = e.get("approval")
        a = f" approval {appr.get('status')}" + (f" by {json.dumps(appr['by'])}" if appr.get("by") else "") \
            if appr else ""
        dur = f" {e['duration_us'] / 1000:.1f} ms" if isinstance(e.get("duration_us"), int) else ""
        click.echo(sanitize(f"{e['seq']:>8} {_iso(e['ts'])} {e.get('agent')} {e.get('capability')} "
                            f"{dec.get('tier')} (rule {dec.get('rule')}){a} -> {status}{dur}"))


def _exit_if_bad(bad: list[BadFrame]) -> None:
    """Readers never stop silently: name every frame that did not decode and exit non-zero."""
    if not bad:
        return
    for b in bad:
        click.echo(sanitize(f"stockade: audit: {b.message()}"), err=True)
    click.echo(f"stockade: audit: {len(bad)} record(s) could not be decoded; every other record was read",
               err=True)
    sys.exit(EXIT_CHECK_FAILED)


@audit.command()
@click.option("-n", "count", type=click.IntRange(0, 1_000_000), default=20, show_default=True)
@click.option("-f", "follow", is_flag=True, help="Keep printing new records.")
@home_option
@json_option
def tail(count: int, follow: bool, home: str | None, as_json: bool) -> None:
    """The last records (JSON lines with --json); -f follows the log."""
    h = need_home(home)
    files = day_files(h.audit_dir)
    recs: list[dict[str, Any]] = []
    pos: tuple[str, int] | None = None
    bad: list[BadFrame] = []
    for p in reversed(files):
        got = list(iter_records(p, bad=bad))
        if pos is None:
            pos = (p.name, got[-1][0] + 4 + got[-1][1]) if got else (p.name, 0)
        recs = [r for _o, _l, r in got] + recs
        if len(recs) >= count:
            break
    for r in recs[-count:] if count else []:
        _print(r, as_json)
    if not follow:
        _exit_if_bad(bad)
        return
    for b in bad:
        click.echo(sanitize(f"stockade: audit: {b.message()}"), err=True)
    try:
        while True:
            time.sleep(0.3)
            pos = _follow(h, pos, as_json)
    except KeyboardInterrupt:
        pass


def _print(rec: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(jsonable(rec), default=str) if as_json else _line(rec))
    sys.stdout.flush()


def _follow(h: Home, pos: tuple[str, int] | None, as_json: bool) -> tuple[str, int] | None:
    for p in day_files(h.audit_dir):
        if pos is not None and p.name < pos[0]:
            continue
        start = pos[1] if pos is not None and p.name == pos[0] else 0
        end = start
        bad: list[BadFrame] = []
        for o, ln, rec in iter_records(p, start, bad=bad):
            _print(rec, as_json)
            end = o + 4 + ln
        for b in bad:
            click.echo(sanitize(f"stockade: audit: {b.message()}"), err=True)
            end = max(end, b.offset + 4 + b.length) if b.length and "framing" not in b.reason else end
        pos = (p.name, end)
    return pos


@audit.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--since", help="Date or ISO time (UTC).")
@click.option("--until", help="Date or ISO time (UTC), exclusive.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@home_option
@json_option
def export(fmt: str, since: str | None, until: str | None, output: str | None, home: str | None,
           as_json: bool) -> None:
    """Every record as one JSON object per line (bytes as hex); the output is JSON with or without --json."""
    h = need_home(home)
    lo, hi = _parse_time(since, "--since"), _parse_time(until, "--until")
    out = open(output, "w") if output else None  # noqa: SIM115
    bad: list[BadFrame] = []
    try:
        with tracked("audit export", as_json) as t:
            _export(h, lo, hi, out, bad, t)
    finally:
        if out is not None:
            out.close()
    _exit_if_bad(bad)


def _export(h: Home, lo: int | None, hi: int | None, out: Any, bad: list[BadFrame],
            progress: Callable[[int, int], None]) -> None:
    files = [p for p in day_files(h.audit_dir) if lo is None or p.name[:10] >= _day(lo - 86_400_000_000)]
    sizes = [p.stat().st_size if p.exists() else 0 for p in files]
    for i, p in enumerate(files):
        for n, (o, _l, rec) in enumerate(iter_records(p, bad=bad)):
            if n % 2000 == 0:
                progress(sum(sizes[:i]) + o, sum(sizes))
            ts = rec.get("ts")
            if not isinstance(ts, int) or (lo is not None and ts < lo) or (hi is not None and ts >= hi):
                continue
            # sys.stdout looked up per line: on a terminal the bar swaps in a proxy that prints above it
            (out or sys.stdout).write(json.dumps(jsonable(rec), default=str) + "\n")
        progress(sum(sizes[:i + 1]), sum(sizes))


def _day(ts_us: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts_us // 1_000_000))


@audit.command()
@home_option
@json_option
def reindex(home: str | None, as_json: bool) -> None:
    """Rebuild audit/index.db from the day files."""
    h = need_home(home)
    idx = _index(h)
    try:
        with tracked("audit reindex", as_json) as t:
            n = idx.rebuild(progress=t)
    finally:
        idx.close()
    emit({"indexed": n, "undecodable": len(idx.bad)}, as_json,
         lambda d: click.echo(f"indexed {d['indexed']} records"))
    _exit_if_bad(idx.bad)


@audit.command()
@click.option("--policy", "policy_dir", required=True, type=click.Path(path_type=Path),
              help="The candidate policy: a directory with org.yaml and/or agents/NAME.yaml.")
@click.option("--since", help="Date or ISO time (UTC).")
@click.option("--until", help="Date or ISO time (UTC), exclusive.")
@click.option("--agent")
@click.option("--examples", type=click.IntRange(0, 100_000), default=200, show_default=True,
              help="Changed and undecidable calls listed in full per category (the counts are always complete).")
@home_option
@json_option
def replay(policy_dir: Path, since: str | None, until: str | None, agent: str | None, examples: int,
           home: str | None, as_json: bool) -> None:
    """Decide every recorded decision again with a candidate policy; exit 1 if any call would be loosened."""
    from stockade.audit import replay as rp
    from stockade.cli.replay_policy import PolicyDecider, load_candidate
    from stockade.core.errors import ConfigError

    h = need_home(home)
    f = rp.Filters(_parse_time(since, "--since"), _parse_time(until, "--until"), agent, examples)
    try:
        policy = load_candidate(policy_dir, h)
    except ConfigError as e:
        if as_json:
            click.echo(json.dumps({"error": {"type": "ConfigError", "message": f"the policy in {policy_dir} does "
                                             "not load", "errors": e.errors}}))
        else:
            click.echo(f"stockade: the policy in {sanitize(str(policy_dir))} does not load:", err=True)
            for line in e.errors:
                click.echo(sanitize(f"  {line}"), err=True)
        sys.exit(EXIT_USAGE)
    with tracked("audit replay", as_json) as bar:
        t = rp.run(h.audit_dir, lambda: PolicyDecider(policy), f, progress=bar)
    out = rp.report(t)
    out["policy_version"] = policy.version
    emit(out, as_json, _render_replay)
    for b in t.bad:
        click.echo(sanitize(f"stockade: audit: {b.message()}"), err=True)
    if out["loosened"]:
        sys.exit(EXIT_CHECK_FAILED)
    if t.bad:
        sys.exit(EXIT_CHECK_FAILED)


def _render_replay(d: dict[str, Any]) -> None:
    click.echo(f"replayed {d['replayed']} of {d['decisions']} recorded decisions with policy {d['policy_version']}: "
               f"{d['unchanged']} unchanged, {d['loosened']} loosened, {d['tightened']} tightened")
    if d["undecidable"]:
        click.echo(f"{d['undecidable']} decision(s) cannot be re-decided (not guessed):")
        for why, n in d["undecidable_reasons"].items():
            click.echo(sanitize(f"  {n:>8}  {why}"))
    if d["not_decided"]:
        click.echo(f"{d['not_decided']} call(s) were refused before policy (never decided; not replayed)")
    for kind in ("loosened", "tightened"):
        if not d["changes"][kind]:
            continue
        click.echo(f"{kind.upper()}:")
        for c in d["changes"][kind]:
            click.echo(sanitize(f"  {c['calls']:>8}  {c['capability']}: {c['then']} -> {c['now']}"))
        for ex in d["examples"][kind]:
            then, now = ex["then"], ex["now"]
            click.echo(sanitize(f"    seq {ex['seq']} {_iso(ex['ts'])} {ex['agent']} {ex['capability']}: "
                                f"{then['tier']} ({then['layer']} rule {then['rule']}) -> "
                                f"{now['tier']} ({now['layer']} rule {now['rule']})"))


@audit.group()
def checkpoint() -> None:
    """Signed checkpoints of the log head."""


@checkpoint.command("export")
@click.option("--fresh", is_flag=True, help="Sign the current head first (through the server if it runs).")
@home_option
@json_option
def checkpoint_export(fresh: bool, home: str | None, as_json: bool) -> None:
    """Print the latest signed checkpoint: keep it somewhere else, verify with --checkpoint later."""
    h = need_home(home)
    if fresh:
        try:
            _fresh(h)
        except StockadeError as e:
            fail_error(e, as_json)
    c = cp.latest(h.audit_dir / cp.LOG_NAME)
    if c is None:
        fail("no checkpoint yet: the gateway signs one every audit.checkpoint_every records and at shutdown; "
             "sign the current head now with: stockade audit checkpoint export --fresh", EXIT_CHECK_FAILED, as_json)
    if as_json:
        click.echo(json.dumps(c, sort_keys=True))
    else:
        click.echo(json.dumps(c, sort_keys=True))
        click.echo(f"# seq {c['seq']} at {_iso(c['ts'])}: save this line off this machine; later run\n"
                   f"#   stockade audit verify --checkpoint FILE", err=True)


def _fresh(h: Home) -> None:
    from stockade.audit import writer as w
    from stockade.core import admin

    if h.admin_sock.exists():
        try:
            admin.call(h, "audit.checkpoint")
            return
        except StockadeError as e:
            if e.type != "Unreachable":
                raise
    fd = w.lock(h.audit_dir, 30.0)
    try:
        w.append_locked(h.audit_dir, h.keys, None, force_checkpoint=True)
    finally:
        w.unlock(fd)


def register(cli: click.Group) -> None:
    cli.add_command(audit)
