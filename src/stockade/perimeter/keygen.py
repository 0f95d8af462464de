"""`stockade perimeter keygen`: new keys, a stanza in stockade.yaml, a ready ~/.fwknoprc stanza.

The edit of stockade.yaml is careful: under an exclusive lock, only the `perimeter:` block is
rewritten (comments elsewhere survive), the whole result is re-validated before anything is
written, and the file is replaced atomically with mode 0600.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
from pathlib import Path
from typing import Any

import yaml

from stockade.core import yamlfile
from stockade.core.config import Config
from stockade.core.errors import ConfigError, err
from stockade.core.home import write_private
from stockade.perimeter.config import Stanza, validate

_TOP_KEY = re.compile(r"^[^\s#]")
_PERIM = re.compile(r"^perimeter\s*:")


def new_keys() -> dict[str, str]:
    """32-byte Rijndael key and 64-byte HMAC key (as `fwknop --key-gen`), 32-byte native key."""
    return {"key_base64": base64.b64encode(os.urandom(32)).decode(),
            "hmac_key_base64": base64.b64encode(os.urandom(64)).decode(),
            "native_key": base64.b64encode(os.urandom(32)).decode()}


def fwknoprc(name: str, stanza: Stanza, server: str, spa_port: int) -> str:
    """A `~/.fwknoprc` stanza for Debian's fwknop client (2.6.x)."""
    return (f"[{name}]\n"
            f"SPA_SERVER          {server}\n"
            f"SPA_SERVER_PORT     {spa_port}\n"
            f"SPA_SERVER_PROTO    udp\n"
            f"ACCESS              {','.join(stanza.open_ports)}\n"
            "# the server grants only the packet's source address: put your public IP here,\n"
            "# or `resolve` to learn it over HTTPS (never `source`/0.0.0.0 unless the stanza allows it)\n"
            "ALLOW_IP            resolve\n"
            f"KEY_BASE64          {stanza.key_base64}\n"
            f"HMAC_KEY_BASE64     {stanza.hmac_key_base64}\n"
            "USE_HMAC            Y\n"
            "HMAC_DIGEST_TYPE    sha256\n"
            "DIGEST_TYPE         sha256\n"
            "ENCRYPTION_MODE     cbc\n")


def _replace_section(text: str, block: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if _PERIM.match(ln)), None)
    if start is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep + block
    end = next((j for j in range(start + 1, len(lines)) if _TOP_KEY.match(lines[j])), len(lines))
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1   # keep blank lines and column-0 comments that introduce the next key
    return "".join(lines[:start]) + block + "".join(lines[end:])


def add_stanza(path: Path, name: str, open_ports: list[str], keys: dict[str, str] | None = None) -> Stanza:
    """Append a stanza to `perimeter.stanzas` in stockade.yaml; returns it. Raises on any error."""
    keys = keys or new_keys()
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        data, lines = yamlfile.loads(text, str(path)) if text.strip() else ({}, {})
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError([f"{path}:1: expected a mapping at the top level"])
        current = validate(data.get("perimeter"), str(path), lines)
        if any(s.name == name for s in current.stanzas):
            raise err("InvalidInput", f"a perimeter stanza named {name!r} already exists", name=name)
        stanza = Stanza(name=name, open_ports=open_ports, **keys)
        raw: dict[str, Any] = dict(data.get("perimeter") or {})
        raw["stanzas"] = [*(raw.get("stanzas") or []), stanza.model_dump(exclude_defaults=False)]
        block = yaml.safe_dump({"perimeter": raw}, sort_keys=False, default_flow_style=False)
        new_text = _replace_section(text, block)
        new_data, new_lines = yamlfile.loads(new_text, str(path))
        Config.model_validate(new_data)          # the rest of the file must still be valid
        validate(new_data.get("perimeter"), str(path), new_lines)
        write_private(path, new_text)
        return stanza
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
