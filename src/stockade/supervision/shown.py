"""Bus events as the owner reads them: every agent-supplied string escaped by
`stockade.core.display`, one rendering for the dashboard's Live activity and the webhook's text."""

from __future__ import annotations

import pwd
from typing import Any

from stockade.core.display import WARNING, show_json, show_text

DETAIL_CHARS = 400


def event_display(kind: str, data: Any) -> dict[str, Any]:
    """Escaped `agent`, `capability`, `kind` and a one-line JSON `detail` of the rest, plus
    `suspicious` when anything hid characters."""
    d = data if isinstance(data, dict) else {}
    rest = {k: v for k, v in d.items() if k not in ("agent", "capability")}
    detail = show_json(rest)
    text = detail.text if len(detail.text) <= DETAIL_CHARS else detail.text[:DETAIL_CHARS] + "…"
    agent, cap, kind_s = (show_text(str(v or "")) for v in (d.get("agent"), d.get("capability"), kind))
    return {"agent": agent.text, "capability": cap.text, "kind": kind_s.text, "detail": text,
            "tier": show_text(str(d.get("tier") or "")).text,
            "suspicious": detail.suspicious or agent.suspicious or cap.suspicious or kind_s.suspicious}


def event_text(kind: str, severity: str, data: Any) -> tuple[str, bool]:
    """One human-readable line (a notification's body), and whether it carries the warning."""
    d = event_display(kind, data)
    who = f" {d['agent']} -> {d['capability']}" if d["agent"] or d["capability"] else ""
    line = f"[{show_text(severity).text}] {d['kind']}:{who} {d['detail']}"
    return (f"{line}\n⚠ {WARNING}" if d["suspicious"] else line), d["suspicious"]


def _user(uid: Any) -> str:
    """`uid 1000 (alice)`: the name is looked up for reading only; the uid is what was recorded."""
    try:
        return f"uid {int(uid)} ({pwd.getpwuid(int(uid)).pw_name})"
    except (KeyError, ValueError, TypeError, OverflowError):
        return f"uid {uid}"


def who_text(by: Any) -> str:
    """Who decided an approval or revoked a key (the `decided_by` / `by` records) as one line:
    `uid 1000 (alice) with stockade approvals approve (pid 4242)`, `dashboard session 3f2a… from
    127.0.0.1`. Recorded values are escaped; an unknown shape is shown as its JSON."""
    if by is None or by == "":
        return "-"
    if not isinstance(by, dict):
        return show_text(str(by)).text
    via = by.get("via")
    client = f" from {show_text(str(by['client'])).text}" if by.get("client") else ""
    if via == "dashboard":
        return f"dashboard session {show_text(str(by.get('session', '?'))).text}{client}"
    if via == "dashboard-api":
        return f"dashboard API ({show_text(str(by.get('auth', 'token'))).text}){client}"
    if via in ("admin-socket", "cli-offline") and "uid" in by:
        cmd = by.get("cmdline") or by.get("command")
        with_cmd = f" with {show_text(str(cmd)).text}" if cmd else ""
        where = " (gateway not running)" if via == "cli-offline" else ""
        return f"{_user(by['uid'])}{with_cmd} (pid {show_text(str(by.get('pid'))).text}){where}"
    return show_json(by, indent=None).text
