"""Secrets never on a command line: argv is world-readable (`ps`, /proc/PID/cmdline, shell history).

Commands take a key, token or passphrase from an environment variable, a file or a prompt. An old
flag that took the secret itself stays as a hidden option whose only effect is a clear error that
says how to pass it now (and nothing is done with the value).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stockade.cli.common import EXIT_USAGE, fail


def refused_flag(flag: str, env: str, file_flag: str) -> Callable[[Any], Any]:
    """A hidden FLAG that fails at once: the secret it carried is already in the process list."""

    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            fail(f"{flag} is no longer accepted: a secret on the command line is visible to every user "
                 f"(ps, /proc). Set {env} or pass {file_flag} FILE", EXIT_USAGE)

    return click.option(flag, "refused_" + flag.strip("-").replace("-", "_"), hidden=True, expose_value=False,
                        callback=refuse, is_eager=True, default=None)


def read_secret(env: str, file: str | None, what: str) -> str | None:
    """The secret from FILE (first line, trailing newline stripped) or the environment variable ENV."""
    if file:
        try:
            text = Path(file).read_text()
        except OSError as e:
            fail(f"cannot read the {what} file {file}: {e.strerror}", EXIT_USAGE)
        return text.splitlines()[0].strip() if text.strip() else None
    return os.environ.get(env) or None
