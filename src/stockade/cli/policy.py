"""`stockade policy validate | explain | diff` (docs/design.md "Policy"). All offline: no server needed."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from stockade.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    emit,
    fail,
    fail_error,
    get_home,
    home_option,
    json_option,
    sanitize,
)
from stockade.cli.names import plural
from stockade.core.errors import ConfigError
from stockade.core.home import Home


@click.group()
def policy() -> None:
    """Check, explain and compare policies (works without a running server)."""


def _layer_of(path: Path, layer: str | None) -> str:
    if layer:
        return layer
    return "agent" if path.parent.name == "agents" else "org"


@policy.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--layer", type=click.Choice(["org", "agent"]), default=None,
              help="Which layer the file is (default: agent if it lives in an agents/ directory, else org).")
@home_option
@json_option
def validate(file: str, layer: str | None, home: str | None, as_json: bool) -> None:
    """Check a policy file: errors with file:line (exit 1), warnings (exit 0)."""
    from stockade.policy import analysis, loader
    from stockade.policy import setup as policy_setup
    from stockade.policy.engine import compile_policy

    path = Path(file)
    if not path.is_file():
        fail(f"no such file: {file}", EXIT_USAGE, as_json)
    h: Home | None = get_home(home)
    h = h if h is not None and h.exists() else None
    lay = _layer_of(path, layer)
    cat = policy_setup.home_catalog(h)
    try:
        pf = loader.load_file(path, lay, home=h, cat=cat)
    except ConfigError as e:
        data = {"file": str(path), "layer": lay, "valid": False, "errors": e.errors, "warnings": []}
        emit(data, as_json, _render_validate)
        raise SystemExit(EXIT_CHECK_FAILED) from None
    system = loader.load_system(loader.context(h))
    higher = compile_policy(system, None, {})
    if lay == "agent" and h is not None and (h.policies / "org.yaml").exists():
        with contextlib.suppress(ConfigError):
            higher = compile_policy(system, loader.load_file(h.policies / "org.yaml", "org", home=h), {})
    agent = path.stem if lay == "agent" else "*"
    warns = analysis.warnings(pf, cat, higher, agent)
    data = {"file": str(path), "layer": lay, "valid": True, "rules": len(pf.rules), "errors": [], "warnings": warns}
    emit(data, as_json, _render_validate)


def _render_validate(d: dict[str, Any]) -> None:
    for e in d["errors"]:
        click.echo(f"error: {sanitize(e)}", err=True)
    for w in d["warnings"]:
        click.echo(f"warning: {sanitize(w)}", err=True)
    if d["valid"]:
        click.echo(f"{sanitize(d['file'])}: valid ({plural(d['rules'], 'rule')}, layer {d['layer']}"
                   f"{', ' + plural(len(d['warnings']), 'warning') if d['warnings'] else ''})")
    else:
        click.echo(f"{sanitize(d['file'])}: invalid ({plural(len(d['errors']), 'error')})")


def _load_home_policy(h: Home, as_json: bool) -> Any:
    from stockade.policy import loader
    from stockade.policy.facts import Facts
    from stockade.upstream.setup import known_tools

    up = known_tools(h)     # upstream tools as the gateway last discovered them, and their read-only hints
    try:
        return loader.load_home(h, _home_catalog(h), Facts(read_only=lambda c: c in up and up[c][0]))
    except ConfigError as e:
        fail_error(e, as_json)


def _home_catalog(h: Home) -> Any:
    """The home's capability names: built-ins, packs, and upstream tools as last discovered."""
    from stockade.policy import setup as policy_setup
    from stockade.upstream.setup import known_tools

    cat = policy_setup.home_catalog(h)
    for name, (_ro, args) in known_tools(h).items():
        cat.args.setdefault(name, args)
    return cat


@policy.command()
@click.option("--agent", "agent", required=True, help="Agent name.")
@click.option("--capability", "capability", required=True, help="Capability name, e.g. filesystem.write.")
@click.option("--args", "args_json", default=None,
              help="Arguments as a JSON object. Without it: the range of tiers the capability can take "
                   "and the rules on its arguments that decide.")
@home_option
@json_option
def explain(agent: str, capability: str, args_json: str | None, home: str | None, as_json: bool) -> None:
    """Which tier a call would get, which rule decides it (file:line), every layer's verdict and
    the rate-limit state. Reads the home's files and counters; counts nothing."""
    args = _explain_args(args_json, as_json)
    h = get_home(home)
    if not h.policies.is_dir():
        fail(f"no stockade home at {h.root} (run: stockade init --home {h.root})", EXIT_USAGE, as_json)
    pol = _load_home_policy(h, as_json)
    cat = _home_catalog(h)
    _known_names(h, agent, capability, cat, as_json)
    out = _explain_call(h, pol, agent, capability, args if args is not None else {})
    if args is None:
        from stockade.policy.engine import outlook
        from stockade.policy.runtime import describe_outlook

        look = describe_outlook(outlook(pol, agent, capability, cat.args.get(capability)), owner=True)
        if look["depends_on_arguments"]:
            # The verdict for a call without arguments would be a fiction (the system rules fail
            # closed on a missing path): say what the arguments decide instead.
            out = {k: out[k] for k in ("agent", "capability", "visible", "version", "default")}
            out.update(tier=look["tier"], outlook=look)
    emit(out, as_json, _render_explain)


def _explain_args(args_json: str | None, as_json: bool) -> dict[str, Any] | None:
    if args_json is None:
        return None
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as e:
        fail(f"--args is not valid JSON: {e}", EXIT_USAGE, as_json)
    if not isinstance(args, dict):
        fail("--args must be a JSON object", EXIT_USAGE, as_json)
    return args


def _known_names(h: Home, agent: str, capability: str, cat: Any, as_json: bool) -> None:
    """An unknown agent or capability is an error naming the nearest known one, not an answer
    about a name nobody has (a typo would read as "this is what bob gets")."""
    from stockade.cli.names import unknown

    category = capability.split(".", 1)[0]
    if not cat.exists(capability) and (not cat.known(capability) or
                                       any(n.split(".", 1)[0] == category for n in cat.names())):
        # A name in a category that exists (filesystem.wirte, exchange.get_balanse) is a typo; a
        # name in no installed category (vault.get) may still be asked about: the system rules cover it.
        fail(unknown("capability", capability, cat.names(), "stockade pack list"), EXIT_USAGE, as_json)
    agents = _agent_names(h)
    if agents is not None and agent not in agents:
        fail(unknown("agent", agent, agents, "stockade agent list; an agent needs a key or a policy file "
                     "in policies/agents/"), EXIT_USAGE, as_json)


def _agent_names(h: Home) -> set[str] | None:
    """Agents with a key or a policy file (None: this home has no agents store to ask)."""
    names = {p.stem for p in (h.policies / "agents").glob("*.yaml")} if (h.policies / "agents").is_dir() else set()
    if not h.db_path.exists():
        return names or None
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True)
        try:
            names |= {r[0] for r in conn.execute("SELECT name FROM agents")}
        finally:
            conn.close()
    except sqlite3.Error:
        return names or None
    return names


def _explain_call(h: Home, pol: Any, agent: str, capability: str, args: dict[str, Any]) -> dict[str, Any]:
    from stockade.policy.ratelimit import RateLimiter
    from stockade.policy.runtime import PolicyEngine

    conn = None
    if h.db_path.exists():
        import sqlite3

        conn = sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True)
        try:
            conn.execute("SELECT 1 FROM policy_rate_hits LIMIT 1")
        except sqlite3.Error:
            conn.close()
            conn = None
    limiter = RateLimiter(conn, readonly=True)
    try:
        engine = PolicyEngine(pol, limiter)
        d = engine.peek(agent, capability, args)
        visible = engine.visible(agent, capability)
    finally:
        limiter.close()
    return {"tier": d.tier, "agent": agent, "capability": capability, "rule": d.rule, "layer": d.layer,
            "file": d.file, "line": d.line, "reason": d.reason, "retry_after": d.retry_after,
            "visible": visible, "version": d.layers.get("version"),
            "layers": {k: d.layers.get(k) for k in ("system", "org", "agent") if k in d.layers},
            "default": d.layers.get("default"), "rate_limits": d.layers.get("rate_limits", [])}


def _render_outlook(d: dict[str, Any]) -> None:
    look = d["outlook"]
    click.echo(f"tier: {look['tier']}: from {look['min_tier']} to {look['max_tier']}")
    click.echo("decided by these rules on the arguments (pass --args '{...}' to decide one call):")
    for r in look["rules"]:
        when = sanitize(json.dumps(r.get("when"), sort_keys=True))
        click.echo(f"  {r['layer']:<7} {r['tier']:<18} {sanitize(r['rule'])} when {when} "
                   f"({sanitize(str(r.get('file')))}:{r.get('line')})")
        if r.get("reason"):
            click.echo(f"          {sanitize(r['reason'])}")
    click.echo(f"  default {d['default']}")


def _render_explain(d: dict[str, Any]) -> None:
    if "outlook" in d:
        _render_outlook(d)
        return
    where = f" ({d['file']}:{d['line']})" if d.get("file") else ""
    click.echo(f"tier: {d['tier']}")
    click.echo(f"decided by: {d['layer']} {sanitize(str(d['rule'] or '(default)'))}{sanitize(where)}")
    if d.get("reason"):
        click.echo(f"reason: {sanitize(d['reason'])}")
    for name, v in d["layers"].items():
        if v.get("tier") is None:
            click.echo(f"  {name:<7} abstains (no matching rule)")
        else:
            click.echo(f"  {name:<7} {v['tier']:<18} {sanitize(str(v.get('rule')))} "
                       f"({sanitize(str(v.get('file')))}:{v.get('line')})")
    click.echo(f"  default {d['default']}")
    for r in d["rate_limits"]:
        click.echo(f"  rate limit {sanitize(r['rule'])}: {r['count']}/{r['max']} per {r['window_s']:g}s"
                   f"{' EXCEEDED, retry after ' + str(r.get('retry_after')) + 's' if r['exceeded'] else ''}")
    if not d["visible"]:
        click.echo("  (hidden from this agent's capability list: blocked whatever the arguments)")


def _load_side(spec: str, home: Home | None, as_json: bool) -> Any:
    """A side of a diff: an org file, a policies/ directory or a home directory."""
    from stockade.policy import loader
    from stockade.policy.engine import compile_policy

    p = Path(spec)
    ctx_home = home
    try:
        if p.is_file():
            sysf = loader.load_system(loader.context(ctx_home))
            return compile_policy(sysf, loader.load_file(p, "org", home=ctx_home), {})
        if p.is_dir():
            root = p.parent if p.name == "policies" else p
            if not (root / "policies").is_dir():
                fail(f"{spec}: not a policy file, a policies/ directory or a home", EXIT_USAGE, as_json)
            return loader.load_home(Home(root.absolute()))
    except ConfigError as e:
        fail_error(e, as_json)
    fail(f"no such file or directory: {spec}", EXIT_USAGE, as_json)


@policy.command()
@click.argument("old")
@click.argument("new")
@home_option
@json_option
def diff(old: str, new: str, home: str | None, as_json: bool) -> None:
    """Every agent x capability pair whose tier changes from OLD to NEW (files, policies/ dirs or
    homes). "*" stands for agents without their own file."""
    from stockade.policy import analysis
    from stockade.policy import setup as policy_setup

    h = get_home(home) if home else None
    a = _load_side(old, h, as_json)
    b = _load_side(new, h, as_json)
    changes = analysis.diff(a, b, policy_setup.catalog())
    out = {"old": old, "new": new, "old_version": a.version, "new_version": b.version,
           "changed": len(changes), "changes": changes}

    def render(d: dict[str, Any]) -> None:
        if not d["changes"]:
            click.echo("no tier changes")
        for c in d["changes"]:
            click.echo(f"{sanitize(c['agent']):<16} {sanitize(c['capability']):<32} {c['old']:>18} -> {c['new']:<18}"
                       f" e.g. {sanitize(json.dumps(c['example_args']))}")

    emit(out, as_json, render)


def register(cli: click.Group) -> None:
    cli.add_command(policy)
