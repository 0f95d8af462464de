"""No command accepts a secret in argv: walk every click command's parameters (issue 22)."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from stockade.cli.main import cli

SECRET = re.compile(r"(key|token|passphrase|password|secret|credential)", re.I)
# Options whose value names a file or a non-secret thing (a public key file, a key *name*, a vault ref).
SAFE_SUFFIX = ("-file", "_file", "-path", "_path", "-dir", "-id", "-name", "--keys-dir")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, cmd in group.commands.items():
        out.append(((*prefix, name), cmd))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, (*prefix, name)))
    return out


def _secret_value_params(cmd: click.Command) -> list[str]:
    bad = []
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.is_flag or p.hidden and not p.expose_value:
            continue
        for opt in p.opts:
            if SECRET.search(opt) and not opt.endswith(SAFE_SUFFIX) and not isinstance(p.type, click.Path):
                bad.append(opt)
    return bad


def test_the_walk_sees_the_commands_that_take_secrets() -> None:
    names = {" ".join(path) for path, _ in _commands(cli)}
    assert {"connect", "knock", "vault set", "release build", "upgrade"} <= names


@pytest.mark.parametrize(("path", "cmd"), _commands(cli), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_no_option_takes_a_secret_value(path: tuple[str, ...], cmd: click.Command) -> None:
    assert _secret_value_params(cmd) == [], f"stockade {' '.join(path)} takes a secret on the command line"


@pytest.mark.parametrize(("argv", "env"), [
    (["connect", "--key", "stk_secretvalue"], "STOCKADE_AGENT_KEY"),
    (["knock", "127.0.0.1", "--key", "c2VjcmV0"], "STOCKADE_KNOCK_KEY"),
    (["knock", "127.0.0.1", "--fwknop", "--key-base64", "c2VjcmV0"], "STOCKADE_KNOCK_KEY_BASE64"),
    (["knock", "127.0.0.1", "--fwknop", "--hmac-key-base64", "c2VjcmV0"], "STOCKADE_KNOCK_HMAC_KEY_BASE64"),
])
def test_old_secret_flags_fail_and_say_how(argv: list[str], env: str) -> None:
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2
    out = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert "no longer accepted" in out and env in out and "secretvalue" not in out


def test_connect_reads_the_key_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from stockade.cli.secrets import read_secret

    f = tmp_path / "k"
    f.write_text("stk_fromfile\n")
    assert read_secret("STOCKADE_AGENT_KEY_UNSET_FOR_TEST", str(f), "agent key") == "stk_fromfile"
