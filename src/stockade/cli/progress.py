"""Progress for long CLI work (issue 18: `stockade bench policy` was silent for 50 s): a rich
spinner with the elapsed time and the last step on a terminal's stderr; nothing at all with
--json or when stderr is not a terminal (pipes, CI, tests), so machine output never changes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console


def wanted(as_json: bool, stream: TextIO | None = None) -> bool:
    """Progress only for a person: not with --json, only on a terminal."""
    s = stream if stream is not None else sys.stderr
    return not as_json and s.isatty()


@contextmanager
def working(title: str, as_json: bool, stream: TextIO | None = None) -> Iterator[Callable[[str], None]]:
    """`with working("bench policy", as_json) as step: ... step("10k rules")`: the spinner shows
    `title · step · 12 s`. A no-op (the step function ignores its argument) when not wanted."""
    if not wanted(as_json, stream):
        yield lambda _msg: None
        return
    console = Console(file=stream if stream is not None else sys.stderr)
    start = time.monotonic()
    last = ["starting"]
    with console.status(f"{title} · starting") as status:
        def step(msg: str) -> None:
            last[0] = msg
            status.update(f"{title} · {msg} · {time.monotonic() - start:.0f} s")
        yield step
    console.print(f"{title}: done in {time.monotonic() - start:.0f} s ({last[0]})", highlight=False)
