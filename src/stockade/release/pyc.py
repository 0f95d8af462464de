"""Judge a `__pycache__/*.pyc` against its verified source: Python runs the .pyc, not the .py.

A .pyc is accepted only if it is named for this interpreter (`NAME.<cache_tag>[.opt-N].pyc`), its
source is a listed file that verified, its header is this interpreter's magic with the source's
size (timestamp pycs) or hash (hash-based pycs), and its code is what compiling that source gives:
byte for byte, or (marshal's reference flags depend on refcounts in the compiling process) equal
code objects, which compare bytecode, constants, names and line tables recursively.
"""

from __future__ import annotations

import importlib.util
import marshal
import re
import sys
from importlib._bootstrap_external import _code_to_hash_pyc, _code_to_timestamp_pyc  # type: ignore[attr-defined]
from pathlib import Path

_NAME = re.compile(r"^(?P<stem>[^.]+)\.(?P<tag>[^.]+)(?:\.opt-(?P<opt>[12]))?\.pyc$")


def source_of(pyc: Path) -> tuple[Path, int] | None:
    """The source a .pyc stands for and its optimisation level; None if not this interpreter's name."""
    m = _NAME.match(pyc.name)
    if pyc.parent.name != "__pycache__" or not m or m.group("tag") != sys.implementation.cache_tag:
        return None
    return pyc.parent.parent / f"{m.group('stem')}.py", int(m.group("opt") or 0)


def judge(pyc_bytes: bytes, source: bytes, source_path: Path, optimize: int) -> str | None:
    """None if the .pyc is the compiled source; else why not (one short sentence)."""
    if len(pyc_bytes) < 16 or pyc_bytes[:4] != importlib.util.MAGIC_NUMBER:
        return "not a .pyc of this Python (bad magic number)"
    flags = int.from_bytes(pyc_bytes[4:8], "little")
    if flags & ~0b11:
        return "unknown .pyc flags"
    try:
        expected = compile(source, str(source_path), "exec", dont_inherit=True, optimize=optimize)
    except (SyntaxError, ValueError):
        return "its source does not compile"
    if flags & 1:
        if pyc_bytes[8:16] != importlib.util.source_hash(source):
            return "its source hash is not the source's"
        rebuilt = _code_to_hash_pyc(expected, pyc_bytes[8:16], bool(flags & 2))
    else:
        if int.from_bytes(pyc_bytes[12:16], "little") != len(source) & 0xFFFFFFFF:
            return "its recorded source size is not the source's"
        rebuilt = _code_to_timestamp_pyc(expected, int.from_bytes(pyc_bytes[8:12], "little"), len(source))
    if bytes(rebuilt) == pyc_bytes:
        return None
    try:
        code = marshal.loads(pyc_bytes[16:])  # noqa: S302 (Python would load this very file on import)
    except (EOFError, ValueError, TypeError):
        return "its code does not load"
    return None if code == expected else "its code is not the compiled source"
