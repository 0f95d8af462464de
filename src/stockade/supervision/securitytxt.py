"""`/.well-known/security.txt` (RFC 9116), built from the owner's `security` config section.

Pure: the text depends only on the config, the time and the address the file is served at, so it
is unit-tested without a server. No contact configured means no file (a 404), never a
placeholder address a reporter would write to in vain.
"""

from __future__ import annotations

import time

from stockade.core.config import SecurityConfig


def build(cfg: SecurityConfig, canonical: str, now: float | None = None) -> str | None:
    """The file's text, or None when the owner has not published a contact."""
    if not cfg.contact:
        return None
    now = time.time() if now is None else now
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + cfg.expires_days * 86400))
    lines = [f"Contact: {cfg.contact}"]
    if cfg.advisories:
        lines.append(f"Contact: {cfg.advisories}")   # the project's own advisory channel
    lines += [f"Expires: {expires}", f"Preferred-Languages: {cfg.languages}", f"Canonical: {canonical}"]
    return "\n".join(lines) + "\n"
