"""`stockade bench packs`: what verification-before-every-execution costs per call.

A generated pack of 50 files (pack.yaml + 49 modules of ~2 KiB) is signed once; each iteration
does what the sandboxed runner does per call (read every file through fds, check every hash and
the Ed25519 signature, compile the entry module from memory and call it). The anchor is the same
call with verification skipped (read + compile + call only). Goal: <= 3 ms p50 added.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from _util import row
from stockade.packs import tree
from stockade.packs.manifest import build_manifest, canonical, key_id, sign
from stockade.packs.runner import load_entry, verify_in_place

PACK_YAML = """name: bench
version: 1.0.0
publisher: bench
capabilities:
  - name: bench.noop
    entry: m0:run
    purpose: p
    when_to_use: w
    input: {type: object}
    output: {type: object}
"""


def _make(root: Path, n_files: int = 50) -> dict[str, Any]:
    (root / "src").mkdir(parents=True)
    (root / "pack.yaml").write_text(PACK_YAML)
    filler = "\n".join(f"CONST_{i} = {i!r}  # padding to a realistic module size" for i in range(40))
    for i in range(n_files - 1):
        (root / "src" / f"m{i}.py").write_text(f'"""module {i}"""\n{filler}\n\ndef run(args):\n    return {{}}\n')
    key = Ed25519PrivateKey.generate()
    files, _ = tree.read_dir(root)
    manifest = build_manifest("bench", "1.0.0", files)
    (root / "SIGNATURE").write_bytes(sign(manifest, key))
    import hashlib

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"name": "bench", "version": "1.0.0", "publisher": "bench", "key_id": key_id(key.public_key()),
            "pubkey": base64.b64encode(raw).decode(), "dir": str(root), "deps_sha256": None,
            "manifest_sha256": hashlib.sha256(canonical(manifest)).hexdigest(), "entries": {"bench.noop": "m0:run"}}


def run(quick: bool = False) -> dict[str, Any]:
    n = 100 if quick else 1000
    tmp = Path(tempfile.mkdtemp(prefix="stockade-bench-packs-"))
    try:
        info = _make(tmp / "pack")
        verified, plain = [], []
        for i in range(n + n // 10):
            t = time.perf_counter_ns()
            files = verify_in_place(info)
            load_entry("bench", files, "m0:run")({})
            d1 = time.perf_counter_ns() - t
            t = time.perf_counter_ns()
            files, _ = tree.read_dir(info["dir"])
            load_entry("bench", files, "m0:run")({})
            d2 = time.perf_counter_ns() - t
            if i >= n // 10:
                verified.append(d1)
                plain.append(d2)
        added = sorted(a - b for a, b in zip(verified, plain, strict=True))
        return {"bench": "packs", "results": [
            row("50-file pack: read + verify + compile + call", verified, anchor="read + compile + call, no verify",
                anchor_ns=plain),
            row("added by verification (per call)", added),
        ]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
