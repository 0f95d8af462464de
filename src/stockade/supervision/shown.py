"""Bus events as the owner reads them: every agent-supplied string escaped by
`stockade.core.display`, one rendering for the dashboard's Live activity and the webhook's text."""

from __future__ import annotations

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
