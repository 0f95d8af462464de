"""`stockade vault init|unseal|seal|status|set|rotate|list|remove|rekey` (issue 8, docs/design.md "Formats").

Passphrases come from `--passphrase-file`, `STOCKADE_VAULT_PASSPHRASE` or a hidden prompt on the
terminal; secret values from `--value-file`, stdin or a hidden prompt: never from argv (argv is
world-readable in /proc). unseal/seal go to the running gateway over run/admin.sock; set, list,
remove and rekey go there when it runs and write vault.db directly when it does not.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from stockade.cli.common import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    emit,
    fail,
    fail_error,
    home_option,
    json_option,
    need_home,
    sanitize,
)
from stockade.cli.names import unknown
from stockade.core import admin, agents
from stockade.core.errors import StockadeError
from stockade.core.home import Home
from stockade.vault import keys
from stockade.vault.store import VaultFile

ENV_PASS, ENV_NEW_PASS = "STOCKADE_VAULT_PASSPHRASE", "STOCKADE_VAULT_NEW_PASSPHRASE"


def _strip_newline(b: bytes) -> bytes:
    if b.endswith(b"\r\n"):
        return b[:-2]
    return b[:-1] if b.endswith(b"\n") else b


def _tty_prompt(prompt: str, confirm: bool) -> bytes:
    import getpass

    try:
        tty = open("/dev/tty", "r+")  # noqa: SIM115 - closed below
    except OSError:
        return b""
    with tty:
        first = getpass.getpass(prompt + ": ", stream=tty)
        if confirm and getpass.getpass("again: ", stream=tty) != first:
            fail("the two entries differ", EXIT_USAGE)
    return first.encode("utf-8")


def _passphrase(path: str | None, env: str, what: str, *, confirm: bool = False, as_json: bool = False) -> bytearray:
    if path:
        with open(path, "rb") as f:
            raw = _strip_newline(f.read())
    elif os.environ.get(env):
        raw = os.environ[env].encode("utf-8")
    else:
        raw = _tty_prompt(what, confirm)
        if not raw:
            fail(f"no {what.lower()}: give --passphrase-file, set {env}, or run on a terminal", EXIT_USAGE, as_json)
    if not raw:
        fail(f"the {what.lower()} is empty", EXIT_USAGE, as_json)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"the {what.lower()} is not UTF-8", EXIT_USAGE, as_json)
    return bytearray(raw)


def _value(value_file: str | None, raw: bool, as_json: bool) -> bytearray:
    if value_file:
        with open(value_file, "rb") as f:
            data = f.read()
    elif not sys.stdin.isatty():
        data = sys.stdin.buffer.read()
    else:
        data = _tty_prompt("Secret value", True)
        raw = True
    if not raw:
        data = _strip_newline(data)
    if not data:
        fail("the secret value is empty", EXIT_USAGE, as_json)
    return bytearray(data)


def _ts(t: Any) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z") if isinstance(t, int) else None


def _offline_audit(home: Home, kind: str, **data: Any) -> None:
    try:
        from stockade.audit.writer import append_offline_or_admin
    except ImportError:
        return
    with contextlib.suppress(Exception):
        append_offline_or_admin(home, {"kind": kind, **data})


def _run(fn: Callable[[], Any], as_json: bool) -> Any:
    try:
        return fn()
    except StockadeError as e:
        fail_error(e, as_json)


def _unlocked(h: Home, f: VaultFile, passphrase_file: str | None, as_json: bool) -> keys.KeyBuffer:
    pw = _passphrase(passphrase_file, ENV_PASS, "Vault passphrase", as_json=as_json)
    kb = keys.KeyBuffer()
    try:
        _run(lambda: f.unlock(pw, kb), as_json)
    finally:
        keys.wipe(pw)
    return kb


pass_opt = click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True), default=None,
                        help=f"Read the passphrase from this file (one trailing newline is ignored); "
                             f"else ${ENV_PASS}, else a hidden prompt.")


@click.group()
def vault() -> None:
    """The secrets vault: values agents can use by reference but never read."""


@vault.command()
@home_option
@pass_opt
@json_option
def init(home: str | None, passphrase_file: str | None, as_json: bool) -> None:
    """Create vault.db under a new passphrase (Argon2id 64 MiB, t=3, p=4)."""
    h = need_home(home)
    f = VaultFile(h.vault_path)
    pw = _passphrase(passphrase_file, ENV_PASS, "New vault passphrase", confirm=True, as_json=as_json)
    if len(pw) < 12 and not as_json:
        click.echo("warning: a passphrase under 12 characters is weak", err=True)
    kb = keys.KeyBuffer()
    try:
        _run(lambda: f.init(pw, kb), as_json)
    finally:
        keys.wipe(pw)
        kb.close()
        f.close()
    _offline_audit(h, "vault.initialized")
    emit({"vault": str(h.vault_path), "initialized": True, "sealed": True}, as_json,
         lambda d: click.echo(f"vault created at {d['vault']} (the running gateway stays sealed until "
                              f"`stockade vault unseal`)"))


@vault.command()
@home_option
@pass_opt
@json_option
def unseal(home: str | None, passphrase_file: str | None, as_json: bool) -> None:
    """Send the passphrase to the running gateway, which derives and keeps the key in memory."""
    h = need_home(home)
    if not admin.running(h):
        fail(f"no running gateway for {h.root} (stockade serve --home {h.root})", EXIT_UNREACHABLE, as_json)
    pw = _passphrase(passphrase_file, ENV_PASS, "Vault passphrase", as_json=as_json)
    try:
        res = _run(lambda: admin.call(h, "vault.unseal", {"passphrase": pw.decode("utf-8")}, timeout=120), as_json)
    finally:
        keys.wipe(pw)
    emit(res, as_json, lambda d: click.echo(f"vault unsealed ({d.get('secrets', 0)} secrets)"))


@vault.command()
@home_option
@json_option
def seal(home: str | None, as_json: bool) -> None:
    """Wipe the key from the gateway's memory; secret-using calls fail with VaultSealed."""
    h = need_home(home)
    res = _run(lambda: admin.call(h, "vault.seal"), as_json)
    emit(res, as_json, lambda d: click.echo("vault sealed"))


@vault.command()
@home_option
@json_option
def status(home: str | None, as_json: bool) -> None:
    """Initialized? sealed? how many secrets? (from the gateway if it runs, else from vault.db)."""
    h = need_home(home)
    if admin.running(h):
        res = _run(lambda: admin.call(h, "vault.status"), as_json)
        res["running"] = True
    else:
        f = VaultFile(h.vault_path)
        res = {"initialized": f.exists(), "sealed": True, "running": False, "path": str(h.vault_path)}
        if f.exists():
            res["secrets"] = len(_run(f.rows, as_json))
        f.close()

    def render(d: dict[str, Any]) -> None:
        if not d.get("initialized"):
            click.echo("no vault (stockade vault init)")
            return
        state = "sealed" if d.get("sealed") else "unsealed"
        where = "gateway running" if d.get("running") else "gateway not running"
        click.echo(f"vault {state}, {d.get('secrets', 0)} secrets ({where})")

    emit(res, as_json, render)


def _set_common(h: Home, name: str, scope: tuple[str, ...], hosts: tuple[str, ...], value: bytearray,
                passphrase_file: str | None, as_json: bool, rotate: bool,
                binding: dict[str, Any] | None = None) -> dict[str, Any]:
    scopes = [s for part in scope for s in part.split(",") if s]
    host_list = [x for part in hosts for x in part.split(",") if x]
    bind = binding or {}
    if admin.running(h):
        args = {"name": name, "scope": scopes, "hosts": host_list, "rotate": rotate,
                "value_b64": base64.b64encode(bytes(value)).decode(), **bind}
        return _run(lambda: admin.call(h, "vault.set", args), as_json)
    f = VaultFile(h.vault_path)
    kb = _unlocked(h, f, passphrase_file, as_json)
    try:
        row = _run(lambda: f.put(kb, name, value, scopes, host_list, keep_scope=rotate, must_exist=rotate, **bind),
                   as_json)
    finally:
        kb.close()
        f.close()
    _offline_audit(h, "vault.secret_rotated" if rotate else "vault.secret_set", name=row.name,
                   scope=row.scope, hosts=row.hosts, agents=row.public()["agents"], disclosed=row.disclosed)
    return row.public()


def _known_names(h: Home, scopes: list[str], agent_names: list[str], as_json: bool) -> None:
    """A scope must name a capability that exists (built-in, the vault's or an installed pack's)
    and an agent one that has a key: a typo would store a secret nothing can ever use."""
    from stockade.cli.upstream import upstream_scope
    from stockade.policy.setup import home_catalog

    cat = home_catalog(h)
    for s in scopes:
        if not cat.exists(s) and not upstream_scope(h, s):
            fail(unknown("capability", s, cat.names(), "stockade pack list; install a pack before scoping a "
                         "secret to its capabilities"), EXIT_USAGE, as_json)
    known = [a.name for a in agents.list_all(h.db())]
    for a in agent_names:
        if a not in known:
            fail(unknown("agent", a, known, "stockade agent list"), EXIT_USAGE, as_json)


@vault.command("set")
@click.argument("name")
@click.option("--scope", multiple=True, required=True, help="Capability that may use it (repeat or comma-separate).")
@click.option("--host", "hosts", multiple=True, help="Host it may be sent to (network.http_request): host, "
              "host:port, *.domain; https only unless written http://host.")
@click.option("--agent", "agent_names", multiple=True,
              help="Agent that may use it (repeat for several); or --all-agents.")
@click.option("--all-agents", is_flag=True, help="Every agent may use it (explicit: there is no default).")
@click.option("--disclose-to-agent", is_flag=True,
              help="Needed for a scope that hands the value to code the agent controls (process.run): the "
                   "agent will be able to read the value. Shown as disclosed in `vault list`.")
@click.option("--value-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Read the value from this file (else stdin, else a hidden prompt).")
@click.option("--raw", is_flag=True, help="Keep a trailing newline of the value (default: strip one).")
@home_option
@pass_opt
@json_option
def set_(name: str, scope: tuple[str, ...], hosts: tuple[str, ...], agent_names: tuple[str, ...], all_agents: bool,
         disclose_to_agent: bool, value_file: str | None, raw: bool, home: str | None, passphrase_file: str | None,
         as_json: bool) -> None:
    """Add or replace a secret (value from --value-file, stdin or a hidden prompt; never argv)."""
    h = need_home(home)
    scopes = {s for part in scope for s in part.split(",")}
    if "network.http_request" in scopes and not hosts:
        fail("a secret scoped to network.http_request needs --host (where it may be sent)", EXIT_USAGE, as_json)
    if bool(agent_names) == all_agents:
        fail("bind the secret to agents: --agent NAME (repeatable) or --all-agents (one of the two)",
             EXIT_USAGE, as_json)
    binding: dict[str, Any] = {"agents": [a for part in agent_names for a in part.split(",") if a],
                               "all_agents": all_agents, "disclose_to_agent": disclose_to_agent}
    _known_names(h, sorted(s for s in scopes if s), binding["agents"], as_json)
    value = _value(value_file, raw, as_json)
    try:
        res = _set_common(h, name, scope, hosts, value, passphrase_file, as_json, rotate=False, binding=binding)
    finally:
        keys.wipe(value)
    emit(res, as_json, lambda d: click.echo(f"secret {sanitize(d['name'])} stored (scope {', '.join(d['scope'])}"
                                            + (f"; hosts {', '.join(d['hosts'])}" if d["hosts"] else "")
                                            + f"; agents {', '.join(d['agents'])})"
                                            + ("\nDISCLOSED: these agents can read its value" if d["disclosed"]
                                               else "")))


@vault.command()
@click.argument("name")
@click.option("--value-file", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option("--raw", is_flag=True, help="Keep a trailing newline of the value.")
@home_option
@pass_opt
@json_option
def rotate(name: str, value_file: str | None, raw: bool, home: str | None, passphrase_file: str | None,
           as_json: bool) -> None:
    """Replace a secret's value, keeping its scope and hosts."""
    h = need_home(home)
    value = _value(value_file, raw, as_json)
    try:
        res = _set_common(h, name, (), (), value, passphrase_file, as_json, rotate=True)
    finally:
        keys.wipe(value)
    emit(res, as_json, lambda d: click.echo(f"secret {sanitize(d['name'])} rotated"))


@vault.command("list")
@home_option
@json_option
def list_(home: str | None, as_json: bool) -> None:
    """Names, scopes, hosts and last use. Never values."""
    h = need_home(home)
    if admin.running(h):
        res = _run(lambda: admin.call(h, "vault.list"), as_json)
    else:
        f = VaultFile(h.vault_path)
        if not f.exists():
            res = {"sealed": True, "secrets": []}
        else:
            res = {"sealed": True, "secrets": [r.public() for r in _run(f.rows, as_json)]}
        f.close()

    def render(d: dict[str, Any]) -> None:
        if not d["secrets"]:
            click.echo("no secrets (stockade vault set NAME --scope CAP)")
        for s in d["secrets"]:
            used = _ts(s.get("last_used")) or "never"
            hosts = f"  hosts {', '.join(s['hosts'])}" if s["hosts"] else ""
            agents = f"  agents {', '.join(s.get('agents') or ['*'])}"
            flag = "  DISCLOSED (agents can read it)" if s.get("disclosed") else ""
            click.echo(sanitize(f"{s['name']:<24} scope {', '.join(s['scope'])}{hosts}{agents}  last used {used}"
                                f"{flag}"))
            if s.get("warning"):
                click.echo(sanitize(f"  warning: {s['warning']}"), err=True)

    emit(res, as_json, render)


@vault.command()
@click.argument("name")
@home_option
@json_option
def remove(name: str, home: str | None, as_json: bool) -> None:
    """Delete a secret (no passphrase needed: removing is not reading)."""
    h = need_home(home)
    if admin.running(h):
        res = _run(lambda: admin.call(h, "vault.remove", {"name": name}), as_json)
    else:
        f = VaultFile(h.vault_path)
        ok = _run(lambda: f.remove(name), as_json)
        f.close()
        if not ok:
            fail_error(StockadeError("SecretNotFound", f"no secret named {name!r}"), as_json)
        _offline_audit(h, "vault.secret_removed", name=name)
        res = {"name": name, "removed": True}
    emit(res, as_json, lambda d: click.echo(f"secret {sanitize(name)} removed"))


vault.add_command(remove, "delete")


@vault.command()
@home_option
@pass_opt
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help=f"Read the new passphrase from this file; else ${ENV_NEW_PASS}, else a hidden prompt.")
@json_option
def rekey(home: str | None, passphrase_file: str | None, new_passphrase_file: str | None, as_json: bool) -> None:
    """Change the passphrase: every secret is re-encrypted under a new key in one transaction."""
    h = need_home(home)
    old = _passphrase(passphrase_file, ENV_PASS, "Current vault passphrase", as_json=as_json)
    new = _passphrase(new_passphrase_file, ENV_NEW_PASS, "New vault passphrase", confirm=True, as_json=as_json)
    try:
        if admin.running(h):
            res = _run(lambda: admin.call(h, "vault.rekey", {"passphrase": old.decode(),
                                                             "new_passphrase": new.decode()}, timeout=300), as_json)
        else:
            res = _rekey_offline(h, old, new, as_json)
    finally:
        keys.wipe(old)
        keys.wipe(new)
    emit(res, as_json, lambda d: click.echo(f"vault rekeyed ({d['secrets']} secrets re-encrypted)"))


def _rekey_offline(h: Home, old: bytearray, new: bytearray, as_json: bool) -> dict[str, Any]:
    f = VaultFile(h.vault_path)
    check, new_kb = keys.KeyBuffer(), keys.KeyBuffer()
    try:
        _run(lambda: f.unlock(old, check), as_json)
        progress = None
        if not as_json and sys.stderr.isatty():
            from rich.progress import Progress

            bar = Progress(transient=True)
            task = bar.add_task("re-encrypting", total=None)
            bar.start()

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)
        try:
            n = _run(lambda: f.rekey(check, new, new_kb, progress), as_json)
        finally:
            if progress is not None:
                bar.stop()
    finally:
        check.close()
        new_kb.close()
        f.close()
    _offline_audit(h, "vault.rekeyed", secrets=n)
    return {"rekeyed": True, "secrets": n, "sealed": True}


def register(cli: click.Group) -> None:
    cli.add_command(vault)
