"""Conditions decide on what the call will actually do (issue 14 items 1-3), pure and offline:

- path_touches: a capability that acts below its path (declared `acts_below:` in its definition)
  touches every protected path inside it; an omitted path is its schema default (the workspace);
- argv_match: a rule that lets a command run without approval does not apply when the call's
  env or cwd can change what that command text runs;
- url_host_in: decided on the host egress will connect to (IP literals matched as the hostname
  that resolved to them, other spellings canonical or refused, redirects followed)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from tests.policy.policy_helpers import CTX, EMPTY_SYSTEM, org

from stockade.capabilities.registry import load_registry, parse_definitions
from stockade.core.errors import ConfigError
from stockade.policy.engine import compile_policy, evaluate
from stockade.policy.facts import BUILTIN_SCOPES, Facts, Reach, registry_scope
from stockade.policy.model import TIERS, parse_data

SECRET = {"id": "secret", "capability": "filesystem.*", "tier": "blocked",
          "when": {"path_touches": ["/workspace/secret"]}}


def build(*rules: dict[str, Any], default: str = "autonomous", facts: Facts | None = None) -> Any:
    f = facts or Facts()
    sysf = parse_data(EMPTY_SYSTEM, {}, "system.yaml", "system", ctx=CTX, facts=f)
    return compile_policy(sysf, parse_data(org(*rules, default=default), {}, "org.yaml", "org", ctx=CTX, facts=f), {})


def tier(p: Any, cap: str, args: dict[str, Any], agent: str = "a") -> str:
    return TIERS[evaluate(p, agent, cap, args).tier]


# -- item 1: recursive scope ---------------------------------------------------------------------
@pytest.mark.parametrize(("cap", "args"), [
    ("filesystem.search_content", {"query": "password"}),                       # path omitted
    ("filesystem.search_content", {"query": "password", "path": "/workspace"}),
    ("filesystem.search_content", {"query": "password", "path": "."}),
    ("filesystem.search", {"pattern": "*"}),
    ("filesystem.list", {"recursive": True}),
    ("filesystem.list", {"path": "/workspace", "recursive": True}),
    ("filesystem.delete", {"path": "/workspace", "recursive": True}),
    ("filesystem.move", {"source": "/workspace", "destination": "/tmp/w"}),
    ("filesystem.move", {"source": "/tmp/x", "destination": "/workspace"}),
    ("filesystem.copy", {"source": "/workspace", "destination": "/tmp/w", "recursive": True}),
    ("filesystem.restore", {"path": "/workspace"}),
    ("filesystem.read", {"path": "/workspace/secret/key"}),                     # still: a direct read
])
def test_acting_on_an_ancestor_touches_the_protected_path(cap: str, args: dict[str, Any]) -> None:
    assert tier(build(SECRET), cap, args) == "blocked"


@pytest.mark.parametrize(("cap", "args"), [
    ("filesystem.list", {}),                                                    # not recursive: names only
    ("filesystem.list", {"path": "/workspace", "recursive": False}),
    ("filesystem.search_content", {"query": "x", "path": "/workspace/src"}),   # a sibling tree
    ("filesystem.delete", {"path": "/workspace/src", "recursive": True}),
    ("filesystem.copy", {"source": "/workspace/a.txt", "destination": "/workspace/b.txt"}),
    ("filesystem.read", {"path": "/workspace/secretary.txt"}),
])
def test_calls_beside_the_protected_path_are_not_touched(cap: str, args: dict[str, Any]) -> None:
    assert tier(build(SECRET), cap, args) == "autonomous"


def test_omitted_path_is_the_workspace_for_path_under_too() -> None:
    p = build({"capability": "filesystem.search_content", "tier": "autonomous",
               "when": {"path_under": ["/workspace/public"]}}, default="approval_required")
    assert tier(p, "filesystem.search_content", {"query": "x", "path": "/workspace/public/docs"}) == "autonomous"
    assert tier(p, "filesystem.search_content", {"query": "x"}) == "approval_required"


def test_path_glob_over_a_tree_decides_only_when_it_can() -> None:
    p = build({"capability": "filesystem.*", "tier": "blocked", "when": {"path_glob": "*.pem"}})
    # a recursive search may read a .pem below: cannot say no -> not looser than approval
    assert tier(p, "filesystem.search_content", {"query": "x", "path": "/workspace"}) != "autonomous"
    assert tier(p, "filesystem.read", {"path": "/workspace/a.txt"}) == "autonomous"
    q = build({"capability": "filesystem.*", "tier": "blocked", "when": {"path_glob": "/workspace/keys/*"}})
    assert tier(q, "filesystem.search_content", {"query": "x", "path": "/workspace/src"}) == "autonomous"
    assert tier(q, "filesystem.search_content", {"query": "x", "path": "/workspace"}) == "blocked"
    assert tier(q, "filesystem.list", {"path": "/workspace/keys/a", "recursive": True}) == "blocked"


def test_declared_scopes_come_from_the_definitions() -> None:
    """The fallback table equals what the built-in definitions declare, and a new definition's
    declaration is read (no name list in the policy engine)."""
    reg = load_registry()
    scope = registry_scope(reg)
    declared = {d.name for d in reg.all() if d.acts_below}
    assert declared == {n for n, s in BUILTIN_SCOPES.items() if s.below}
    for name in BUILTIN_SCOPES:
        assert scope(name) == BUILTIN_SCOPES[name], name
    yaml = """capabilities:
  - name: archive.pack
    purpose: p
    when_to_use: w
    acts_below: {dir: true}
    input: {type: object, properties: {dir: {type: string}}}
    output: {type: object}
"""
    d = parse_definitions(yaml, "archive.yaml")[0]
    assert dict(d.acts_below) == {"dir": True}
    with pytest.raises(ConfigError):
        parse_definitions(yaml.replace("{dir: true}", "{nope: true}"), "archive.yaml")


# -- item 2: argv_match and what else changes what runs ---------------------------------------------
LS = {"id": "ls", "capability": "process.run", "tier": "autonomous", "when": {"argv_match": "^ls( |$)"}}


@pytest.mark.parametrize("env", [
    {"LD_PRELOAD": "/workspace/p.so"}, {"LD_LIBRARY_PATH": "/workspace"}, {"PATH": "/workspace/bin:/usr/bin"},
    {"BASH_ENV": "/workspace/x"}, {"ENV": "/workspace/x"}, {"PYTHONPATH": "/workspace"}, {"PERL5OPT": "-Mx"},
    {"RUBYOPT": "-rx"}, {"NODE_OPTIONS": "--require x"}, {"GCONV_PATH": "/workspace"}, {"IFS": "/"},
    {"GLIBC_TUNABLES": "x"}, {"HOME": "/workspace"}, {"GIT_SSH_COMMAND": "sh"}, {"SOMETHING_NEW": "1"},
    {"LANG": "/workspace/locale"}, {"TZ": ":/workspace/tz"},
])
def test_env_that_can_change_what_runs_does_not_ride_an_argv_rule(env: dict[str, str]) -> None:
    p = build(LS, default="approval_required")
    assert tier(p, "process.run", {"argv": ["ls"]}) == "autonomous"
    assert tier(p, "process.run", {"argv": ["ls"], "env": env}) == "approval_required"


def test_inert_env_and_explicitly_allowed_env_keep_the_rule() -> None:
    p = build(LS, default="approval_required")
    assert tier(p, "process.run", {"argv": ["ls"], "env": {"LANG": "C.UTF-8", "TERM": "dumb"}}) == "autonomous"
    q = build({**LS, "when": {"argv_match": "^make( |$)", "env_allow": ["PYTHONPATH", "LC_*"]}},
              default="approval_required")
    assert tier(q, "process.run", {"argv": ["make"], "env": {"PYTHONPATH": "/workspace/lib"}}) == "autonomous"
    assert tier(q, "process.run", {"argv": ["make"], "env": {"LD_PRELOAD": "/x.so"}}) == "approval_required"


def test_negated_argv_rule_cannot_be_loosened_by_env() -> None:
    p = build({"capability": "process.run", "tier": "autonomous", "when": {"not": {"argv_match": "^rm( |$)"}}},
              default="approval_required")
    assert tier(p, "process.run", {"argv": ["ls"]}) == "autonomous"
    assert tier(p, "process.run", {"argv": ["ls"], "env": {"LD_PRELOAD": "/x.so"}}) == "approval_required"


def test_blocking_argv_rules_still_block_with_env() -> None:
    """A restrictive rule decides on the text as before: env neither helps nor hurts it (the
    system layer's guards would otherwise block every call that sets a variable)."""
    p = build({"capability": "process.run", "tier": "blocked", "when": {"argv_match": "^rm "}})
    assert tier(p, "process.run", {"argv": ["rm", "-rf", "x"], "env": {"LD_PRELOAD": "/x.so"}}) == "blocked"
    assert tier(p, "process.run", {"argv": ["ls"], "env": {"FOO": "1"}}) == "autonomous"


def test_relative_program_in_another_cwd_does_not_ride_an_argv_rule() -> None:
    p = build({"capability": "process.run", "tier": "autonomous", "when": {"argv_match": r"^\./build\.sh$"}},
              default="approval_required")
    assert tier(p, "process.run", {"argv": ["./build.sh"]}) == "autonomous"
    assert tier(p, "process.run", {"argv": ["./build.sh"], "cwd": "/workspace"}) == "autonomous"
    assert tier(p, "process.run", {"argv": ["./build.sh"], "cwd": "/tmp"}) == "approval_required"
    q = build({"capability": "process.run", "tier": "autonomous",
               "when": {"argv_match": r"^\./build\.sh$", "path_under": "/tmp/ci", "path_args": ["cwd"]}},
              default="approval_required")
    assert tier(q, "process.run", {"argv": ["./build.sh"], "cwd": "/tmp/ci"}) == "autonomous"


# -- item 3: the host the request connects to --------------------------------------------------------
INTERNAL = {"id": "internal", "capability": "network.http_request", "tier": "approval_required",
            "when": {"url_host_in": ["api.internal.example"]}}
REACH = Reach({"api.internal.example": ("198.51.100.63",), "public.example": ("203.0.113.10",)})


def facts(reach: Reach | None) -> Facts:
    return Facts(reach=lambda agent: reach)


def req(url: str, **kw: Any) -> dict[str, Any]:
    return {"url": url, "follow_redirects": False, **kw}


def test_ip_literal_is_matched_as_the_name_it_resolves_from() -> None:
    p = build(INTERNAL, facts=facts(REACH))
    assert tier(p, "network.http_request", req("http://api.internal.example:8080/")) == "approval_required"
    assert tier(p, "network.http_request", req("http://198.51.100.63:8080/")) == "approval_required"
    assert tier(p, "network.http_request", req("http://203.0.113.10/")) == "autonomous"
    assert tier(p, "network.http_request", req("http://public.example/")) == "autonomous"


@pytest.mark.parametrize("url", [
    "http://API.Internal.Example:8080/", "http://api.internal.example.:8080/",
    "http://user@api.internal.example/", "http://public.example@198.51.100.63/",
    "http://3325256767:8080/", "http://0306.0063.0144.0077/", "http://198.51.100.063/",
    "http://[::ffff:198.51.100.63]/", "http://0xc6.0x33.0x64.0x3f/", "http://198.51.25663/",
])
def test_other_spellings_of_the_host_never_run_at_once(url: str) -> None:
    p = build(INTERNAL, facts=facts(REACH))
    assert tier(p, "network.http_request", req(url)) != "autonomous"


def test_unknown_reach_fails_closed_for_ip_literals() -> None:
    p = build(INTERNAL, facts=facts(None))
    assert tier(p, "network.http_request", req("http://198.51.100.63/")) == "approval_required"
    assert tier(p, "network.http_request", req("http://public.example/")) == "autonomous"


def test_redirects_are_decided_on_every_place_they_can_go() -> None:
    p = build(INTERNAL, facts=facts(REACH))
    # follows redirects (the default): public.example may send it on to api.internal.example
    assert tier(p, "network.http_request", {"url": "http://public.example/"}) == "approval_required"
    assert tier(p, "network.http_request", {"url": "http://public.example/", "max_redirects": 0}) == "autonomous"
    lone = Reach({"public.example": ("203.0.113.10",)})
    assert tier(build(INTERNAL, facts=facts(lone)), "network.http_request", {"url": "http://public.example/"}) \
        == "autonomous"
    # an explicit cidr entry holding the internal address is a way there too
    cidr = Reach({"public.example": ("203.0.113.10",)}, (ipaddress.IPv4Network("198.51.100.0/24"),))
    p2 = build({**INTERNAL, "when": {"url_host_in": ["198.51.100.63"]}}, facts=facts(cidr))
    assert tier(p2, "network.http_request", {"url": "http://public.example/"}) == "approval_required"


def test_a_loosening_host_rule_does_not_open_what_redirects_reach() -> None:
    p = build({"capability": "network.http_request", "tier": "autonomous",
               "when": {"url_host_in": ["public.example"]}}, default="approval_required", facts=facts(REACH))
    assert tier(p, "network.http_request", req("http://public.example/")) == "autonomous"
    assert tier(p, "network.http_request", {"url": "http://public.example/"}) == "approval_required"
