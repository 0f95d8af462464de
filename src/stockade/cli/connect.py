"""`stockade connect`: stdio MCP bridge for Claude Code / Claude Desktop / Codex."""

from __future__ import annotations

import json
import os
import sys

import anyio
import click

from stockade.cli.common import EXIT_UNREACHABLE, EXIT_USAGE, fail
from stockade.cli.secrets import read_secret, refused_flag
from stockade.core.home import Home


def _default_url(home: str | None) -> str:
    h = Home.at(home)
    try:
        port = json.loads(h.ports_file.read_text())["gateway"]
    except (OSError, ValueError, KeyError):
        port = 7700
    return f"http://127.0.0.1:{port}/mcp"


@click.command()
@refused_flag("--key", "STOCKADE_AGENT_KEY", "--key-file")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the agent key (else $STOCKADE_AGENT_KEY).")
@click.option("--url", default=None, help="Gateway MCP URL (default: from the home's run/ports.json, else :7700).")
@click.option("--home", default=None, type=click.Path(file_okay=False), help="Home to read ports.json from.")
def connect(key_file: str | None, url: str | None, home: str | None) -> None:
    """Serve MCP on stdin/stdout, forwarding to the gateway with an agent key.

    The key comes from $STOCKADE_AGENT_KEY or --key-file, never from the command line."""
    from stockade.gateway.bridge import run_bridge

    key = read_secret("STOCKADE_AGENT_KEY", key_file, "agent key")
    if not key:
        fail("an agent key is required: set STOCKADE_AGENT_KEY or pass --key-file FILE", EXIT_USAGE)
    target = url or _default_url(home)
    try:
        anyio.run(run_bridge, target, key)
    except KeyboardInterrupt:
        pass
    except BaseException as e:  # report why, never a traceback on the MCP channel
        msg = _root_cause(e)
        print(f"stockade connect: cannot reach {target}: {msg}", file=sys.stderr)
        sys.stdout.flush()
        os._exit(EXIT_UNREACHABLE)


def _root_cause(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


def register(cli: click.Group) -> None:
    cli.add_command(connect)
