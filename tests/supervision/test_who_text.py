"""Who decided, as the owner reads it (issue 18): `approvals show` and the dashboard's Decided
table show the recorded decider (uid/pid/command or dashboard session) as a line, not a dict,
and `approvals show` never prints `rule None`."""

from __future__ import annotations

import os
import pwd

from click.testing import CliRunner

from stockade.cli.approvals import _show
from stockade.supervision.dashboard import views
from stockade.supervision.shown import who_text

ME = pwd.getpwuid(os.getuid()).pw_name


def test_admin_socket_decider() -> None:
    by = {"via": "admin-socket", "uid": os.getuid(), "pid": 4242, "command": "stockade",
          "cmdline": "/usr/bin/python -m stockade approvals"}
    assert who_text(by) == f"uid {os.getuid()} ({ME}) with /usr/bin/python -m stockade approvals (pid 4242)"


def test_dashboard_and_other_shapes() -> None:
    assert who_text({"via": "dashboard", "session": "3f2a9c", "client": "127.0.0.1"}) == \
        "dashboard session 3f2a9c from 127.0.0.1"
    assert who_text({"via": "dashboard-api", "auth": "admin-token", "client": None}) == "dashboard API (admin-token)"
    assert who_text(None) == "-" and who_text("cli") == "cli"
    assert who_text({"via": "cli-offline", "uid": 0, "pid": 7}).endswith("(pid 7) (gateway not running)")
    odd = who_text({"via": "x\u202e", "n": 1})
    assert "\u202e" not in odd and "\\u202e" in odd


def _approval(**kw: object) -> dict[str, object]:
    a: dict[str, object] = {"approval": "ap1", "status": "approved", "agent": "bob", "session": "s", "capability":
                            "filesystem.write", "rule": None, "layer": "default", "created": 1, "expires": 2,
                            "decided": 3, "decided_by": {"via": "dashboard", "session": "ab12"},
                            "args_hash": "00", "args": {"path": "a"}}
    a.update(kw)
    return a


def test_approvals_show_reads_like_a_sentence() -> None:
    out = CliRunner().invoke(_click(_show), []).output
    assert "rule None" not in out and "None" not in out.split("arguments:")[0], out
    assert "no rule matched (the default tier)" in out and "by dashboard session ab12" in out
    named = CliRunner().invoke(_click(_show, rule="fs-writes", layer="org"), []).output
    assert "decided by rule fs-writes (org layer)" in named


def _click(fn, **kw):  # type: ignore[no-untyped-def]
    import click

    @click.command()
    def run() -> None:
        fn(_approval(**kw))
    return run


def test_decided_table_shows_the_decider_as_text() -> None:
    page = views.approvals([_approval()], [], "csrf")
    assert "dashboard session ab12" in page and "{&#x27;via&#x27;" not in page and "{'via'" not in page
