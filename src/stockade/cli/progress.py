"""Progress for long CLI work (issue 18: `stockade bench policy` was silent for 50 s): a rich
line on a terminal's stderr with the title, a bar when the amount of work is known, the last
step and the elapsed time; nothing at all with --json or when stderr is not a terminal (pipes,
CI, tests), so machine output never changes.

`tracked` waits DELAY seconds before drawing anything, so a command that finishes quickly stays
as quiet as before; only work that really takes a while gets the bar and a closing
`TITLE: done in N s` line. Lower parts (audit, release) never import this: they take an optional
`progress(done, total)` callable, which a `Tracker` is.

Output the command prints while the bar is up is never sent anywhere else: stdout that is not a
terminal (`audit export > file`) is left alone; only when stdout is the same terminal is it
drawn above the bar (so the two do not garble each other).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

DELAY = 1.0     # seconds of silence before anything is drawn (module-level so a test can set it)


def wanted(as_json: bool, stream: TextIO | None = None) -> bool:
    """Progress only for a person: not with --json, only on a terminal."""
    s = stream if stream is not None else sys.stderr
    try:
        return not as_json and s.isatty()
    except ValueError:      # a closed stream
        return False


class Tracker:
    """What a command reports to: `step("reading 2026-11-22.log")` and `t(done, total)` (a
    lower part's `progress` callback). Inactive trackers (not wanted) ignore everything."""

    def __init__(self, progress: Progress | None = None, task: TaskID | None = None) -> None:
        self._progress, self._task = progress, task
        self.last = ""

    @property
    def active(self) -> bool:
        return self._progress is not None

    def step(self, msg: str) -> None:
        self.last = msg
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, what=msg)

    def __call__(self, done: int, total: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, total=max(total, done, 1))


def _columns() -> list[TextColumn | BarColumn | SpinnerColumn | TaskProgressColumn | TimeElapsedColumn]:
    return [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
            TaskProgressColumn(), TextColumn("{task.fields[what]}"), TimeElapsedColumn()]


@contextmanager
def tracked(title: str, as_json: bool, stream: TextIO | None = None,
            delay: float | None = None) -> Iterator[Tracker]:
    """`with tracked("audit verify", as_json) as t: lower(..., progress=t)`. The bar stays a
    pulsing one until a first `t(done, total)`; nothing is drawn before `delay` (DELAY) seconds."""
    if not wanted(as_json, stream):
        yield Tracker()
        return
    out = stream if stream is not None else sys.stderr
    console = Console(file=out, highlight=False, soft_wrap=True)
    same_tty = _stdout_is(out)
    progress = Progress(*_columns(), console=console, transient=True, redirect_stdout=same_tty,
                        redirect_stderr=out is sys.stderr)
    task = progress.add_task(title, total=None, what="")
    tracker = Tracker(progress, task)
    shown = threading.Event()
    lock = threading.Lock()
    done = threading.Event()

    def show() -> None:
        with lock:
            if not done.is_set():
                progress.start()
                shown.set()

    wait = DELAY if delay is None else delay
    timer = threading.Timer(wait, show)
    timer.daemon = True
    start = time.monotonic()
    if wait <= 0:
        show()
    else:
        timer.start()
    try:
        yield tracker
    except BaseException:
        _close(lock, done, timer, shown, progress)      # the error says what happened, not "done"
        raise
    if _close(lock, done, timer, shown, progress):
        tail = f" ({tracker.last})" if tracker.last else ""
        console.print(f"{title}: done in {time.monotonic() - start:.0f} s{tail}")


def _close(lock: threading.Lock, done: threading.Event, timer: threading.Timer, shown: threading.Event,
           progress: Progress) -> bool:
    """Stop the timer and the bar; whether the bar was ever drawn."""
    with lock:
        done.set()
        timer.cancel()
        if shown.is_set():
            progress.stop()
        return shown.is_set()


def _stdout_is(stream: TextIO) -> bool:
    """Is stdout the terminal the bar is drawn on (then stdout is drawn above the bar)?"""
    try:
        return sys.stdout.isatty() and stream.isatty()
    except (ValueError, AttributeError):
        return False


@contextmanager
def working(title: str, as_json: bool, stream: TextIO | None = None) -> Iterator[Callable[[str], None]]:
    """`with working("bench policy", as_json) as step: ... step("10k rules")`: work known to be
    long (a benchmark), shown at once: `title · step · 12 s`, then `title: done in N s (step)`."""
    with tracked(title, as_json, stream, delay=0.0) as t:
        yield t.step
