"""The HTTP protocol the listeners run: uvicorn's h11 protocol with a deadline on request heads.

uvicorn cancels its keep-alive timer as soon as a byte arrives and has no deadline of its own
for a request's head, so a client that trickles its headers (slowloris), or opens a connection
and sends nothing, holds the connection for ever. Here a connection waiting for a request head
(h11 state IDLE) with part of a head buffered, or that never sent one, is closed
`HEADER_READ_SECONDS` after the wait began. Bodies have their own
deadline (`edge.body`); requests being served are not touched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from stockade.core.limits import HEADER_READ_SECONDS


class GuardedH11(H11Protocol):
    header_seconds = HEADER_READ_SECONDS
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_seconds, self._head_deadline)

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return   # closed, or upgraded to a WebSocket
        if self.conn.their_state is not h11.IDLE:
            return   # a request is being read or served
        partial_head = bool(self.conn.trailing_data[0])
        if partial_head or self.cycle is None:
            self.transport.close()   # a trickled head, or a connection that never sent one
        # else: idle between requests; uvicorn's keep-alive timeout closes it
