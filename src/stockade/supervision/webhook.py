"""Best-effort delivery of bus events to the owner's `webhook:` URL (stockade.yaml).

A subscriber task POSTs each event as JSON: the event exactly (`data` keeps the raw values, for
machines) plus `text`, a line for people with every invisible or direction-changing character
escaped, and `suspicious` when it had to (stockade.core.display). It never blocks a producer: the bus drops this
subscriber's oldest events when it falls behind, and a failed delivery is counted, not retried
(the audit log, not the webhook, is the record).

Two formats, chosen by the URL: the generic JSON above, or ntfy's (`webhook: ntfy+https://ntfy.sh/
TOPIC`, any ntfy-compatible server): the `text` line as a plain-text body with `Title`,
`Priority` and `Tags` headers, for approvals, denials and warnings only, so the owner's phone
rings for what needs a person (docs/dashboard.md "Events").
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from stockade.supervision.shown import event_text

TIMEOUT = 5.0


NTFY_PREFIX = "ntfy+"
# What reaches a phone: what needs the owner (approvals), what was refused, and anything above info.
NTFY_KINDS = ("approval.requested", "approval.expired", "call.denied", "agent.revoked", "vault.sealed")
_PRIORITY = {"critical": "5", "warning": "4", "info": "3"}
_TITLES = {"approval.requested": "stockade: approval needed", "approval.expired": "stockade: approval expired",
           "call.denied": "stockade: call denied", "agent.revoked": "stockade: agent key revoked",
           "vault.sealed": "stockade: vault sealed"}


def payload(ev: Any) -> dict[str, Any]:
    text, suspicious = event_text(ev.kind, ev.severity, ev.data)
    return {"source": "stockade", **ev.to_dict(), "text": text, "suspicious": suspicious}


def target(url: str) -> tuple[str, str]:
    """(format, URL to POST to): `ntfy+https://host/topic` is ntfy's format at https://host/topic."""
    if url.startswith(NTFY_PREFIX):
        return "ntfy", url[len(NTFY_PREFIX):]
    return "json", url


def ntfy_request(ev: Any) -> tuple[bytes, dict[str, str]] | None:
    """Pure: the ntfy publish request for an event (body, headers), or None when the event is not
    one a person needs on their phone. Headers are ASCII (the escaped text goes in the body)."""
    if ev.kind not in NTFY_KINDS and ev.severity == "info":
        return None
    text, suspicious = event_text(ev.kind, ev.severity, ev.data)
    title = _TITLES.get(ev.kind) or f"stockade: {ev.kind}"
    tags = ["warning"] if suspicious or ev.severity != "info" else []
    if ev.kind == "approval.requested":
        tags.append("question")
    headers = {"Title": title.encode("ascii", "replace").decode(), "Priority": _PRIORITY.get(ev.severity, "3")
               if ev.kind != "approval.requested" else "4", "user-agent": "stockade-webhook"}
    if tags:
        headers["Tags"] = ",".join(tags)
    return text.encode("utf-8"), headers


class WebhookSender:
    def __init__(self, bus: Any, url: str):
        self.bus = bus
        self.url = url
        self.format, self.post_url = target(url)
        self.sent = 0
        self.failed = 0
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self._sub = self.bus.subscribe(maxsize=1000)
        self._task = asyncio.create_task(self._run(), name="webhook")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sub.close()

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
            while True:
                ev = await self._sub.get()
                if ev is None:
                    continue
                try:
                    if self.format == "ntfy":
                        req = ntfy_request(ev)
                        if req is None:
                            continue
                        r = await client.post(self.post_url, content=req[0], headers=req[1])
                    else:
                        r = await client.post(self.post_url, json=payload(ev),
                                              headers={"user-agent": "stockade-webhook"})
                    if r.status_code < 300:
                        self.sent += 1
                    else:
                        self.failed += 1
                except (httpx.HTTPError, OSError):
                    self.failed += 1

    def health(self) -> dict[str, Any]:
        return {"url": self.url, "format": self.format, "sent": self.sent, "failed": self.failed,
                "dropped": self._sub.dropped}
