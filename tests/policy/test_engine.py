"""Semantics of docs/design.md "Policy", one rule at a time, and the system layer's built-in protections."""

from __future__ import annotations

import pytest
from tests.policy.policy_helpers import build, org, tier

from stockade.policy.conditions import MAX_MATCH_INPUT
from stockade.policy.engine import always_blocked, evaluate
from stockade.policy.model import TIERS

R = dict  # a rule


def test_specificity_exact_beats_prefix_beats_star() -> None:
    p = build(org(R(capability="*", tier="blocked"), R(capability="a.*", tier="notify"),
                  R(capability="a.b.*", tier="approval_required"), R(capability="a.b.c", tier="autonomous")),
              system=None)
    assert tier(p, "a.b.c") == "autonomous"
    assert tier(p, "a.b.d") == "approval_required"
    assert tier(p, "a.x") == "notify"
    assert tier(p, "z.y") == "blocked"


def test_equal_specificity_most_restrictive_wins() -> None:
    p = build(org(R(capability="a.x", tier="autonomous"), R(capability="a.x", tier="notify")), system=None)
    assert tier(p, "a.x") == "notify"


def test_non_matching_specific_rule_falls_through() -> None:
    p = build(org(R(capability="a.x", tier="autonomous", when={"path_under": "/workspace"}),
                  R(capability="a.*", tier="approval_required")), system=None)
    assert tier(p, "a.x", {"path": "/workspace/f"}) == "autonomous"
    assert tier(p, "a.x", {"path": "/etc/f"}) == "approval_required"


def test_layers_join_to_most_restrictive_and_lower_cannot_loosen() -> None:
    p = build(org(R(capability="a.x", tier="approval_required")),
              agents={"a": org(R(capability="a.x", tier="autonomous"))}, system=None)
    assert tier(p, "a.x", agent="a") == "approval_required"
    p = build(org(R(capability="a.x", tier="notify")),
              agents={"a": org(R(capability="a.x", tier="blocked"))}, system=None)
    assert tier(p, "a.x", agent="a") == "blocked"
    assert tier(p, "a.x", agent="b") == "notify"


def test_default_applies_when_all_abstain() -> None:
    p = build(org(R(capability="a.x", tier="autonomous"), default="notify"), system=None)
    assert tier(p, "b.y") == "notify"
    v = evaluate(p, "a", "b.y", {})
    assert v.layer == "default" and v.rule is None
    # no org default: the system layer's default; an agent default can only raise it
    p = build(org(), agents={"a": {"version": 1, "default": "blocked"}}, system=None)
    assert tier(p, "b.y", agent="a") == "blocked"
    assert tier(p, "b.y", agent="other") == "approval_required"
    p = build(None, system=None)
    assert tier(p, "b.y") == "approval_required"


def test_decision_names_rule_file_and_line() -> None:
    p = build(org(R(id="first", capability="a.x", tier="notify")))
    v = evaluate(p, "a", "a.x", {})
    assert (v.rule.label, v.rule.file, v.rule.line, v.layer) == ("first", "org.yaml", 1, "org")


# -- conditions --------------------------------------------------------------------------------
@pytest.mark.parametrize("path,expect", [
    ("/workspace/a", "autonomous"), ("a/b", "autonomous"), ("./x/../y", "autonomous"),
    ("/workspace", "autonomous"), ("/workspace/../etc/passwd", "notify"), ("../etc", "notify"),
    ("/workspacex/a", "notify"), ("//workspace//a", "autonomous"), ("/tmp/a", "notify"),
    ("a/../../../..", "notify"),
])
def test_path_under_canonicalises_lexically(path: str, expect: str) -> None:
    p = build(org(R(capability="filesystem.read", tier="autonomous", when={"path_under": "/workspace"}),
                  default="notify"), system=None)
    assert tier(p, "filesystem.read", {"path": path}) == expect


def test_path_glob_size_equals_argv_url() -> None:
    p = build(org(
        R(capability="filesystem.write", tier="autonomous", when={"path_glob": "/workspace/*.txt"}),
        R(capability="filesystem.append", tier="autonomous", when={"content_size_lt": 4}),
        R(capability="network.http_request", tier="autonomous", when={"url_host_in": ["example.com", "*.ok.org"]}),
        R(capability="process.run", tier="autonomous", when={"argv_match": "^git (status|log)( |$)"}),
        R(capability="network.dns_lookup", tier="autonomous", when={"arg_equals": {"name": "localhost"}}),
        default="notify"), system=None)
    assert tier(p, "filesystem.write", {"path": "notes.txt", "content": ""}) == "autonomous"
    assert tier(p, "filesystem.write", {"path": "notes.md", "content": ""}) == "notify"
    assert tier(p, "filesystem.append", {"path": "x", "content": "abc"}) == "autonomous"
    assert tier(p, "filesystem.append", {"path": "x", "content": "abcd"}) == "notify"
    assert tier(p, "filesystem.append", {"path": "x", "content": "é"}) == "autonomous"   # 2 bytes
    assert tier(p, "network.http_request", {"url": "https://EXAMPLE.com./x", "follow_redirects": False}) == "autonomous"
    assert tier(p, "network.http_request", {"url": "https://a.ok.org/", "follow_redirects": False}) == "autonomous"
    assert tier(p, "network.http_request", {"url": "https://ok.org/", "follow_redirects": False}) == "notify"
    assert tier(p, "network.http_request", {"url": "https://example.com.evil/", "follow_redirects": False}) == "notify"
    assert tier(p, "process.run", {"argv": ["git", "status"]}) == "autonomous"
    assert tier(p, "process.run", {"argv": ["git", "push"]}) == "notify"
    assert tier(p, "network.dns_lookup", {"name": "localhost"}) == "autonomous"
    assert tier(p, "network.dns_lookup", {"name": "other"}) == "notify"


@pytest.mark.parametrize("args", [
    {}, {"path": 3}, {"path": ""}, {"path": "a\x00b"}, {"path": ["x"]},
])
def test_unevaluable_condition_never_loosens(args: dict) -> None:
    p = build(org(R(capability="filesystem.read", tier="autonomous", when={"path_under": "/workspace"}),
                  default="notify"), system=None)
    assert tier(p, "filesystem.read", args) == "approval_required"
    p = build(org(R(capability="filesystem.read", tier="blocked", when={"path_under": "/workspace"}),
                  default="notify"), system=None)
    assert tier(p, "filesystem.read", args) == "blocked"


@pytest.mark.parametrize("cap,args", [
    ("network.http_request", {"url": 5}), ("network.http_request", {"url": "http://[::1"}),
    ("network.http_request", {"url": "no-host"}), ("process.run", {"argv": "rm -rf /"}),
    ("process.run", {"argv": [1, 2]}), ("network.dns_lookup", {}), ("filesystem.write", {"path": "x", "content": 5}),
])
def test_mistyped_arguments_fail_closed(cap: str, args: dict) -> None:
    p = build(org(R(capability="network.http_request", tier="autonomous", when={"url_host_in": ["a.com"]}),
                  R(capability="process.run", tier="autonomous", when={"argv_match": "^ls"}),
                  R(capability="network.dns_lookup", tier="autonomous", when={"arg_equals": {"name": "x"}}),
                  R(capability="filesystem.write", tier="notify", when={"content_size_lt": 10}),
                  default="autonomous"), system=None)
    assert TIERS.index(tier(p, cap, args)) >= TIERS.index("approval_required")


def test_unevaluable_system_rule_blocks() -> None:
    p = build(None)     # shipped system layer only
    assert tier(p, "filesystem.write", {"content": "x"}) == "blocked"           # no path at all
    assert tier(p, "filesystem.write", {"path": 7, "content": "x"}) == "blocked"
    assert tier(p, "process.run", {"argv": "rm -rf /"}) == "blocked"


def test_definite_false_beats_unevaluable_in_one_rule() -> None:
    # all conditions must hold: one that is surely false decides, whatever the others
    p = build(org(R(capability="a.x", tier="blocked", when={"name_match": "b\\..*", "path_under": "/w"}),
                  default="notify"), system=None)
    assert tier(p, "a.x", {}) == "notify"


def test_arbitrary_exception_in_condition_fails_closed() -> None:
    p = build(org(R(id="boom", capability="a.x", tier="autonomous", when={"path_under": "/workspace"}),
                  default="autonomous"), system=None)
    rule = p.org.file.rules[0]

    def boom(agent, cap, args):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError

    object.__setattr__(rule, "cond", boom)
    object.__setattr__(p.org.exact["a.x"].cond[0], "cond", boom)
    v = evaluate(p, "a", "a.x", {"path": "/workspace/x"})
    assert TIERS[v.tier] == "approval_required" and v.rule.label == "boom"


# -- the system layer's built-in protections (no policy file at all) ---------------------------
BLOCKED_CALLS = [
    ("filesystem.write", {"path": "/etc/passwd", "content": "x"}),
    ("filesystem.write", {"path": "/workspace/../etc/cron.d/x", "content": "x"}),
    ("filesystem.write", {"path": "../../usr/bin/ls", "content": "x"}),
    ("filesystem.append", {"path": "/shared/notes", "content": "x"}),
    ("filesystem.mkdir", {"path": "/opt/x"}),
    ("filesystem.delete", {"path": "/shared/x"}),
    ("filesystem.move", {"source": "/shared/x", "destination": "/workspace/x"}),
    ("filesystem.move", {"source": "/workspace/x", "destination": "/etc/x"}),
    ("filesystem.copy", {"source": "/workspace/x", "destination": "/usr/lib/x"}),
    ("filesystem.read", {"path": "/srv/stockade-home/vault.db"}),
    ("filesystem.list", {"path": "/srv/stockade-home"}),
    ("filesystem.read", {"path": "/var/lib/stockade/stockade.db"}),
    ("filesystem.copy", {"source": "/srv/stockade-home/keys/x", "destination": "/workspace/k"}),
    ("filesystem.stat", {"path": "/workspace/../srv/stockade-home/audit"}),
    ("process.run", {"argv": ["cat", "/srv/stockade-home/vault.db"]}),
    ("vault.get", {"name": "GITHUB_TOKEN"}),
    ("vault.export", {}),
    ("secrets.read", {"name": "x"}),
    ("audit.delete", {"seq": 1}),
    ("audit.append", {}),
    ("agent.state_get", {"agent": "bob", "key": "k"}),
    ("state.read", {"agent": "bob"}),
    ("process.run", {"argv": ["rm", "-rf", "/"]}),
    ("process.run", {"argv": ["/bin/rm", "-r", "-f", "/*"]}),
    ("process.run", {"argv": ["rm", "-fr", "~"]}),
    ("process.run", {"argv": ["rm", "--recursive", "--force", "/workspace/"]}),
    ("process.run", {"argv": ["sh", "-c", "cd /tmp && rm -rf /"]}),
    ("process.run", {"argv": ["rm", "-rf", "--no-preserve-root", "/"]}),
    ("process.run", {"argv": ["mkfs.ext4", "/dev/sdb1"]}),
    ("process.run", {"argv": ["/sbin/mkfs", "-t", "xfs", "/dev/vdb"]}),
    ("process.run", {"argv": ["dd", "if=/dev/zero", "of=/dev/sda", "bs=1M"]}),
    ("process.run", {"argv": ["bash", "-c", "cat /dev/zero > /dev/nvme0n1"]}),
    ("process.run", {"argv": ["bash", "-c", ":(){ :|:& };:"]}),
    ("process.run", {"argv": ["bash", "-c", "bomb() { bomb | bomb & }; bomb"]}),
    ("process.run", {"argv": ["bash", "-c", "\u00e9() { \u00e9|\u00e9& }; \u00e9"]}),    # a name an ASCII \w would miss
    ("process.run", {"argv": ["bash", "-c", "b.1() { b.1|b.1& }; b.1"]}),
    ("process.run", {"argv": ["chmod", "-R", "000", "/"]}),
    ("process.run", {"argv": ["shred", "-n", "1", "/dev/sda"]}),
]


@pytest.mark.parametrize("cap,args", BLOCKED_CALLS)
def test_system_layer_blocks_without_any_policy_file(cap: str, args: dict) -> None:
    for p in (build(None), build(org(R(capability="*", tier="autonomous"), default="autonomous"),
                                 agents={"a": org(R(capability=cap, tier="autonomous"))})):
        v = evaluate(p, "a", cap, args)
        assert TIERS[v.tier] == "blocked", (cap, args)
        assert v.layer == "system" and v.rule.label.startswith("sys-")


ALLOWED_CALLS = [
    ("filesystem.write", {"path": "/workspace/a.txt", "content": "x"}),
    ("filesystem.write", {"path": "notes/a.txt", "content": "x"}),
    ("filesystem.write", {"path": "/tmp/x", "content": "x"}),
    ("filesystem.read", {"path": "/etc/hostname"}),
    ("filesystem.read", {"path": "/shared/doc"}),
    ("filesystem.copy", {"source": "/shared/doc", "destination": "/workspace/doc"}),
    ("filesystem.move", {"source": "/workspace/a", "destination": "/tmp/a"}),
    ("filesystem.list", {}),
    ("process.run", {"argv": ["rm", "-rf", "build/"]}),
    ("process.run", {"argv": ["rm", "-rf", "/workspace/build"]}),
    ("process.run", {"argv": ["ls", "-la", "/"]}),
    ("process.run", {"argv": ["python3", "-c", "print('dd of=out')"]}),
    ("process.run", {"argv": ["git", "commit", "-m", "format disk docs: mkfs notes"]}),
    ("agent.whoami", {}),
    ("agent.state_get", {"agent": "a", "key": "k"}),
    ("vault.list", {}),
    ("audit.query", {}),
    ("network.http_request", {"method": "GET", "url": "https://example.com/"}),
]


@pytest.mark.parametrize("cap,args", ALLOWED_CALLS)
def test_system_layer_leaves_ordinary_calls_to_the_owner(cap: str, args: dict) -> None:
    p = build(org(R(capability="*", tier="autonomous"), default="autonomous"))
    assert tier(p, cap, args, agent="a") == "autonomous", (cap, args)


@pytest.mark.timeout(240)
def test_system_argv_matching_is_linear_on_hostile_input() -> None:
    """A hang guard, not a timing assertion: every system pattern is bounded ({0,512}, {1,64}), so
    these inputs take seconds at worst on a loaded machine, while catastrophic backtracking would
    take hours and trip the timeout. The decisions must still be the right ones."""
    p = build(None)
    mib = MAX_MATCH_INPUT - 16
    hostile = {"rm " + "a " * 60000: False, "x" * 200000: False, ":" * 200000: False, "dd " + "b" * 100000: False,
               "rm -rf " + "a " * 100 + "/": True,
               # the longest argv that is matched at all: seconds of the event loop each with Python's re
               ("a () " * (mib // 5))[:mib]: False, ":" * mib: False, "x" * mib: False,
               ("a () {" * (mib // 6))[:mib - 40] + " :(){ :|:& };:": True}
    for h, blocked in hostile.items():
        v = evaluate(p, "a", "process.run", {"argv": ["sh", "-c", h]})
        assert (TIERS[v.tier] == "blocked") is blocked, h[:40]


def test_visibility_hides_only_argument_independent_blocks() -> None:
    p = build(org(R(capability="a.x", tier="blocked"), R(capability="a.y", tier="blocked", when={"path_under": "/w"}),
                  R(capability="c.*", tier="blocked"), R(capability="c.ok", tier="notify")),
              agents={"b": org(R(capability="a.z", tier="blocked"))})
    assert always_blocked(p, "a", "a.x")
    assert not always_blocked(p, "a", "a.y")
    assert always_blocked(p, "a", "c.other") and not always_blocked(p, "a", "c.ok")
    assert always_blocked(p, "b", "a.z") and not always_blocked(p, "a", "a.z")
    assert always_blocked(p, "a", "vault.get") and not always_blocked(p, "a", "vault.list")
    assert not always_blocked(p, "a", "filesystem.write")
    blocked_default = build(org(R(capability="a.ok", tier="notify"), default="blocked"), system=None)
    assert always_blocked(blocked_default, "a", "zz.top") and not always_blocked(blocked_default, "a", "a.ok")


def test_sandbox_profile_is_org_defaults_overlaid_by_the_agent_file() -> None:
    p = build({"version": 1, "sandbox": {"cpu": 0.5, "memory": "512MiB", "egress": []}},
              agents={"a": {"version": 1, "sandbox": {"memory": "1GiB", "egress": ["api.example.com:443"],
                                                     "timeout": "2m"}}})
    assert p.sandbox_profile("a") == {"cpu": 0.5, "memory": "1GiB", "egress": ["api.example.com:443"],
                                      "timeout": 120.0}
    assert p.sandbox_profile("b") == {"cpu": 0.5, "memory": "512MiB", "egress": []}
    assert build(None).sandbox_profile("a") == {}
