"""egress.changed fires on real changes only (issue 18: it fired every ~30 s per agent with nothing
changed, ~2,900 audit records a day per agent). Repeated passes, shallow and deep (the ones the
gateway runs every poll and every 30 s), report nothing; a real edit is reported once."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import need_root
from tests.egress.test_layer import make_home
from tests.egress.topo import A_IP, B_IP

from stockade.egress.manager import Egress, load_settings, profile_source

pytestmark = pytest.mark.xdist_group("egress")


def _quiet(changes: dict[str, list[str]]) -> bool:
    return not any(changes.values())


def test_repeated_passes_report_no_change_then_a_real_edit_once(tmp_path: Path) -> None:
    need_root()
    home = make_home(tmp_path, [f"{A_IP}:8080", "api.exchange.example:443"])
    eg = Egress(home, load_settings(home), profile_source(home))
    try:
        first = eg.reconcile(deep=True)
        assert first["added"] == ["alice"], first
        for deep in (False, True, False, True, True):
            changes = eg.reconcile(deep=deep)
            assert _quiet(changes), (deep, changes)
        agent_file = home.policies / "agents" / "alice.yaml"
        agent_file.write_text(agent_file.read_text().replace(f"{A_IP}:8080", f"{B_IP}:8080"))
        edited = eg.reconcile()
        assert edited["added"] + edited["updated"] == ["alice"], edited     # reported once
        assert _quiet(eg.reconcile(deep=True)) and _quiet(eg.reconcile())
    finally:
        eg.teardown()
