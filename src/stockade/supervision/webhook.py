"""Best-effort delivery of bus events to the owner's `webhook:` URL (stockade.yaml).

A subscriber task POSTs each event as JSON: the event exactly (`data` keeps the raw values, for
machines) plus `text`, a line for people with every invisible or direction-changing character
escaped, and `suspicious` when it had to (stockade.core.display). It never blocks a producer: the bus drops this
subscriber's oldest events when it falls behind, and a failed delivery is counted, not retried
(the audit log, not the webhook, is the record).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from stockade.supervision.shown import event_text

TIMEOUT = 5.0


def payload(ev: Any) -> dict[str, Any]:
    text, suspicious = event_text(ev.kind, ev.severity, ev.data)
    return {"source": "stockade", **ev.to_dict(), "text": text, "suspicious": suspicious}


class WebhookSender:
    def __init__(self, bus: Any, url: str):
        self.bus = bus
        self.url = url
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
                    r = await client.post(self.url, json=payload(ev),
                                          headers={"user-agent": "stockade-webhook"})
                    if r.status_code < 300:
                        self.sent += 1
                    else:
                        self.failed += 1
                except (httpx.HTTPError, OSError):
                    self.failed += 1

    def health(self) -> dict[str, Any]:
        return {"url": self.url, "sent": self.sent, "failed": self.failed, "dropped": self._sub.dropped}
