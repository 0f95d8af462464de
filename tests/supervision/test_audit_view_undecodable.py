"""The dashboard's audit page never hides a record it cannot decode (issue 13 item 1, owner's view).

The CLI readers already name such a frame; the dashboard used to drop it from the list in
silence, so a poisoned record vanished from the owner's main view of the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import cbor2
from tests.audit.helpers import frames
from tests.audit.test_readers import undecodable_record
from tests.conftest import cli_json

from stockade.audit.record import build, frame
from stockade.supervision import audit_view
from stockade.supervision.dashboard import views


def _poison(home: Path) -> None:
    cli_json("agent", "create", "a", home=home)
    day = sorted((home / "audit").glob("????-??-??.log"))[-1]
    off, ln = frames(day)[-1]
    last = cbor2.loads(day.read_bytes()[off + 4:off + ln])
    body, prev = undecodable_record(last["seq"] + 1, last["ts"] + 1, last["hash"])
    good, _ = build({"kind": "agent.created", "agent": "later"}, last["seq"] + 2, last["ts"] + 2, prev)
    with open(day, "ab") as f:
        f.write(frame(body) + frame(good))


def test_the_audit_page_names_an_undecodable_record_and_shows_the_rest(home: Path) -> None:
    _poison(home)       # appended behind the index's back: the page must index it itself
    gw = SimpleNamespace(home=SimpleNamespace(audit_dir=home / "audit"))
    records, bad = asyncio.run(audit_view.query(gw, {"limit": 100}))  # type: ignore[arg-type]
    assert "later" in [r.get("agent") for r in records]
    assert len(bad) == 1 and "could not be decoded" in bad[0] and "offset" in bad[0], bad
    page = views.audit({"available": True, "records": records, "undecodable": bad, "filters": {}}, "csrf")
    assert "could not be decoded" in page and "stockade audit verify" in page
