"""Readers never stop silently at a record they cannot decode (issue 13 item 1, reader side).

A log is made with a record whose body no reader can decode (CBOR nested past the decoder's
limit, built here by hand: the writer itself never produces one) followed by good records.
verify, export, tail, query and reindex each report it (non-zero exit, a clear message naming
the file and offset) and still show every later record.
"""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
from tests.audit.helpers import frames
from tests.conftest import cli_json, run_cli

from stockade.audit.record import build, frame
from stockade.core.limits import AUDIT_DECODE_DEPTH

pytestmark = pytest.mark.xdist_group("audit-cli")


def _enc(v: object) -> bytes:
    return cbor2.dumps(v, canonical=True)


def undecodable_record(seq: int, ts: int, prev: bytes) -> tuple[bytes, bytes]:
    """A correctly hashed record whose `args` nest deeper than any reader decodes: (body, hash)."""
    import hashlib

    deep = b"\x81" * (AUDIT_DECODE_DEPTH + 100) + b"\x00"
    parts = [(b"ts", _enc("ts") + _enc(ts)), (b"seq", _enc("seq") + _enc(seq)), (b"args", _enc("args") + deep),
             (b"kind", _enc("kind") + _enc("x")), (b"prev", _enc("prev") + _enc(prev))]
    digest = hashlib.sha256(prev + b"\xa5" + b"".join(p for _k, p in parts)).digest()
    with_hash = parts[:3] + [(b"hash", _enc("hash") + _enc(digest))] + parts[3:]
    return b"\xa6" + b"".join(p for _k, p in with_hash), digest


@pytest.fixture
def poisoned(home: Path) -> Path:
    for name in ("a", "b"):
        cli_json("agent", "create", name, home=home)                  # seq 1, 2
    day = sorted((home / "audit").glob("????-??-??.log"))[-1]
    data = day.read_bytes()
    off, ln = frames(day)[-1]
    last = cbor2.loads(data[off + 4:off + ln])
    body, prev = undecodable_record(3, last["ts"] + 1, last["hash"])
    out = frame(body)
    for seq in (4, 5, 6):
        b, prev = build({"kind": "agent.created", "agent": f"later{seq}"}, seq, last["ts"] + seq, prev)
        out += frame(b)
    with open(day, "ab") as f:
        f.write(out)
    (home / "audit" / "index.db").unlink()                             # the index must be rebuilt from the files
    return home


def _later(lines: list[str]) -> list[int]:
    return [json.loads(x)["seq"] for x in lines if x.strip()]


def test_verify_reports_it_and_checks_the_rest(poisoned: Path) -> None:
    p = run_cli("audit", "verify", "--json", home=poisoned, check=False)
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert [(f["seq"], f["cause"]) for f in out["findings"]] == [(3, "malformed")]
    assert out["last_seq"] == 6 and any("resumed" in n for n in out["notes"])


@pytest.mark.parametrize("cmd", [("audit", "export", "--format", "jsonl"), ("audit", "tail", "-n", "10", "--json")])
def test_export_and_tail_go_on_past_it(poisoned: Path, cmd: tuple[str, ...]) -> None:
    p = run_cli(*cmd, home=poisoned, check=False)
    assert p.returncode == 1
    assert _later(p.stdout.splitlines()) == [1, 2, 4, 5, 6]
    assert "could not be decoded" in p.stderr and "offset" in p.stderr


def test_reindex_and_query_go_on_past_it(poisoned: Path) -> None:
    p = run_cli("audit", "reindex", "--json", home=poisoned, check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["indexed"] == 5
    assert "could not be decoded" in p.stderr
    q = run_cli("audit", "query", "--json", home=poisoned, check=False)
    assert q.returncode == 1 and "could not be decoded" in q.stderr
    assert [r["seq"] for r in json.loads(q.stdout)["records"]] == [1, 2, 4, 5, 6]
    later = cli_json("audit", "query", "--agent", "later6", home=poisoned, check=False)["records"]
    assert [r["seq"] for r in later] == [6]
