"""Issue 23: a damaged page in one of stockade.db's tables (approvals, packs, agents) is refused
at start: exit 3 and one line naming the table and what to do, no traceback, no gateway that
serves with a part broken underneath it (before: `serve` came up and the damage surfaced later,
as a hang in the approvals part or a 500 on every call)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from tests.conftest import STOCKADE, run_cli


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h = tmp_path_factory.mktemp("damaged") / "home"
    run_cli("init", home=h)
    return h


def _damage(db: Path, table: str) -> None:
    """Overwrite the header of the table's root page with garbage, as a bad disk sector would."""
    c = sqlite3.connect(db)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")      # every page in the main file, none in the WAL
    (root,) = c.execute("SELECT rootpage FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
    (size,) = c.execute("PRAGMA page_size").fetchone()
    c.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xff" * 64)


@pytest.mark.parametrize("table", ["approvals", "packs", "agents"])
def test_serve_refuses_a_damaged_table_naming_it(pristine: Path, tmp_path: Path, table: str) -> None:
    home = tmp_path / "home"
    shutil.copytree(pristine, home, symlinks=True)
    _damage(home / "stockade.db", table)
    p = subprocess.run([*STOCKADE, "serve", "--home", str(home), "--port", "0", "--dashboard-port", "0"],
                       capture_output=True, text=True, timeout=120)   # a hang fails here
    out = p.stdout + p.stderr
    assert p.returncode == 3, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "cannot start" in line]
    assert len(lines) == 1, out
    assert f"table {table} " in lines[0] and "damaged" in lines[0] and "backup" in lines[0], lines[0]
    assert not (home / "run" / "ports.json").exists()


def test_an_intact_database_passes_the_check(pristine: Path) -> None:
    from stockade.core.db import damaged_tables

    c = sqlite3.connect(pristine / "stockade.db")
    try:
        assert damaged_tables(c) == []
    finally:
        c.close()
