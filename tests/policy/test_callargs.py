"""The per-evaluation memo (conditions.CallArgs) changes no condition's answer.

`evaluate` hands every condition a CallArgs copy, so the joined argv and the canonical paths
are computed once per decision. Each shipped system rule and a set of org rules reading paths
and argv must answer exactly as with the plain arguments: matched, not matched, or cannot
evaluate (with the same reason), call after call on the same memo.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.policy.policy_helpers import build, org

from stockade.policy.conditions import CallArgs

POLICY = build(org(
    {"capability": "process.run", "tier": "autonomous", "when": {"argv_match": "^git (status|log)$"}},
    {"capability": "*", "tier": "blocked", "when": {"path_under": "/workspace/secret"}},
    {"capability": "filesystem.*", "tier": "notify", "when": {"path_glob": "*.md", "path_args": ["path", "cwd"]}},
    {"capability": "filesystem.*", "tier": "approval_required", "when": {"not": {"path_outside": "/tmp"}}},
))
CAPS = ["process.run", "filesystem.read", "filesystem.list", "filesystem.move"]
pieces = st.sampled_from(["git", "status", "log", "rm", "-rf", "/", "/workspace", "secret", "a.md", "..", "",
                          "/var/lib/stockade", "()", "x{ y|y& }", "/tmp/x", "sub/../secret/k"])
values = st.one_of(pieces, st.lists(pieces, max_size=4), st.integers(), st.none(), st.lists(st.integers(), max_size=2))
arguments = st.dictionaries(st.sampled_from(["argv", "path", "source", "destination", "cwd", "recursive", "env"]),
                            values, max_size=4)


def _answer(cond: Any, cap: str, args: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "value", bool(cond("a", cap, args))
    except Exception as e:  # noqa: BLE001 - the kind and the reason are what must not change
        return type(e).__name__, str(e)


@settings(max_examples=300, deadline=None)
@given(cap=st.sampled_from(CAPS), args=arguments)
def test_every_condition_answers_the_same_through_the_memo(cap: str, args: dict[str, Any]) -> None:
    memo = CallArgs(args)
    for idx in POLICY.layers("a"):
        if idx is None:
            continue
        for bucket in idx.buckets(cap):
            for rule in bucket.cond:
                plain = _answer(rule.cond, cap, args)
                assert _answer(rule.cond, cap, memo) == plain, rule.label
                assert _answer(rule.cond, cap, memo) == plain, rule.label   # asked again: from the memo


def test_the_memo_is_a_copy_made_for_one_evaluation() -> None:
    args = {"argv": ["ls"]}
    memo = CallArgs.of(args)
    assert memo == args and memo is not args and isinstance(memo, CallArgs)
    assert CallArgs.of(memo) is memo
