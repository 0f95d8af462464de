"""The contracts between the parts (docs/design.md) hold in the code: one error table, every part
loads, no untyped state bag, no made-up error type, the import layering, references that resolve.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from stockade.core.errors import ErrorType
from stockade.gateway import service
from stockade.packs.runner import PACK_ERROR_TYPES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "stockade"
DESIGN = ROOT / "docs" / "design.md"


def _section(doc: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    assert m, f"docs/design.md has no '## {title}' section"
    return m.group(1)


def _error_table() -> dict[str, tuple[int, int]]:
    """`| \\`Type\\` | code | HTTP |` rows of the Errors section."""
    rows = re.findall(r"^\| `(\w+)` \| (-?\d+) \| (\d+) \|", _section(DESIGN.read_text(), "Errors"), re.M)
    return {name: (int(code), int(status)) for name, code, status in rows}


def test_error_table_in_design_doc_is_error_type() -> None:
    """The documented mapping is the one the transports use (and every code is a JSON-RPC int)."""
    actual = {e.value: (e.code, e.http_status) for e in ErrorType}
    for name, (code, status) in actual.items():
        assert isinstance(code, int) and isinstance(status, int), (name, code, status)
    assert _error_table() == actual


def test_every_part_setup_module_loads() -> None:
    for part in service.PARTS:
        module = service.load_part(part)
        assert module.__name__ == f"stockade.{part}.setup"


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text(encoding="utf-8")) for p in sorted(SRC.rglob("*.py"))]


def test_no_untyped_state_bag_on_the_gateway() -> None:
    """Parts read and write typed `Gateway` fields (core.wiring), never a `gw.state` dict."""
    found = [f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}"
             for p, text in _sources() for m in re.finditer(r"\bgw\.state\b", text)]
    assert found == []


_RAISED = re.compile(r"\b(?:err|StockadeError)\(\s*[\"'](\w+)[\"']")


def test_every_error_type_raised_is_known() -> None:
    """A typo in `err("...")` would reach agents as an undocumented type with a default code."""
    known = {e.value for e in ErrorType} | PACK_ERROR_TYPES
    unknown = sorted({f"{p.relative_to(ROOT)}: {m.group(1)}"
                      for p, text in _sources() for m in _RAISED.finditer(text) if m.group(1) not in known})
    assert unknown == []
    assert sum(1 for _, text in _sources() for _ in _RAISED.finditer(text)) > 100   # the scan sees them


def test_import_layering_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout


def test_every_part_has_a_place_in_the_layers() -> None:
    """A new part (a package under stockade/) left out of the layers contract escapes it."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        contracts = tomllib.load(fh)["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    listed = {name.strip().removeprefix("stockade.") for layer in layers for name in layer.split("|")}
    parts = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert parts == listed


def _references() -> list[tuple[str, str]]:
    """(where, text) of every file that may point at the design doc."""
    files = [*SRC.rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md",
             *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    return [(str(f.relative_to(ROOT)), f.read_text(encoding="utf-8")) for f in files if f != Path(__file__)]


def test_references_point_inside_the_repo() -> None:
    """No DESIGN.md or research/ notes (not in the repo); every `docs/design.md "Section"` exists."""
    outside = [where for where, text in _references() if re.search(r"DESIGN(\.md| §)|research/", text)]
    assert outside == []
    headings = set(re.findall(r"^#+ (.+)$", DESIGN.read_text(), re.M))
    cited = {(where, m.group(1)) for where, text in _references()
             for m in re.finditer(r'docs/design\.md,? "([^"]+)"', text)}
    assert cited, "no section references found: the pattern no longer matches how they are written"
    assert sorted((w, s) for w, s in cited if s not in headings) == []
