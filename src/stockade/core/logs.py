"""The one log of stockade: logger `stockade`, to stderr, set up once by the CLI.

Everything the owner should see about the running gateway that is not an event on the bus or an
audit record (a part that failed to stop, a reload that crashed, a bug turned into `Internal`)
goes through `log`, with the traceback where there is one. `configure` is called by the CLI
before anything runs; a library caller that never calls it gets Python's default (warnings and
above to stderr through the last-resort handler).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

log = logging.getLogger("stockade")

Format = Literal["text", "json"]
_TEXT = "%(asctime)s stockade %(levelname)s %(name)s: %(message)s"
_JSON = ('{"ts": "%(asctime)s", "level": "%(levelname)s", "logger": "%(name)s", '
         '"message": %(message_json)s}')


class _JsonFormatter(logging.Formatter):
    """One JSON object per line (for journald or a log shipper); the message is JSON-escaped."""

    def format(self, record: logging.LogRecord) -> str:
        record.message_json = json.dumps(record.getMessage()
                                         + ("\n" + self.formatException(record.exc_info) if record.exc_info else ""))
        return _JSON % {**record.__dict__, "asctime": self.formatTime(record)}


_handler: logging.Handler | None = None


def configure(level: str | int = "INFO", fmt: Format = "text") -> logging.Logger:
    """Send `stockade` (and its children) to stderr at `level`; idempotent (one handler)."""
    global _handler
    if _handler is not None:
        log.removeHandler(_handler)
    handler = _handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    log.addHandler(handler)
    log.setLevel(level.upper() if isinstance(level, str) else level)
    log.propagate = False
    return log
