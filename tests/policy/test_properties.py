"""Property tests of the layered semantics (docs/design.md "Policy") over generated policies.

Each example generates a system, an org and an agent layer (random patterns, tiers, conditions,
defaults) and checks every capability of a small universe against several argument sets, so a
run covers thousands of policies and tens of thousands of decisions.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.policy.engine import Policy, compile_policy, evaluate
from stockade.policy.model import APPROVAL, BLOCKED, parse_data

EXAMPLES = 1000
CAPS = ["a.x", "a.y", "a.b.x", "a.b.y", "c.x"]
PATTERNS = [*CAPS, "a.*", "a.b.*", "c.*", "*"]
TIER_NAMES = ["autonomous", "notify", "approval_required", "blocked"]
ARGS: list[dict[str, Any]] = [
    {},
    {"k": 1, "path": "/workspace/p/f", "content": "abc"},
    {"k": 2, "path": "/etc/f", "content": ""},
    {"k": "1", "path": 5},                       # mistyped: conditions on k / path cannot be evaluated
    {"path": "/workspace/../etc", "content": "x" * 10},
]
CONDS = st.sampled_from([
    None, None, None,
    {"arg_equals": {"k": 1}}, {"arg_equals": {"k": 2}},
    {"path_under": "/workspace/p"}, {"path_under": ["/etc", "/tmp"]},
    {"content_size_gte": 3}, {"content_size_lt": 3},
    {"path_under": "/workspace", "arg_equals": {"k": 1}},
    {"not": {"arg_equals": {"k": 1}}},
    {"name_match": "a\\..*"},
])
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def rules(draw: Any, max_size: int = 6) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        r: dict[str, Any] = {"capability": draw(st.sampled_from(PATTERNS)),
                             "tier": draw(st.sampled_from(TIER_NAMES))}
        c = draw(CONDS)
        if c:
            r["when"] = c
        out.append(r)
    return out


def with_ids(rs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", **r} for i, r in enumerate(rs)]


@st.composite
def layers(draw: Any) -> dict[str, Any]:
    def doc(prefix: str, system: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"version": 1, "rules": with_ids(draw(rules(4 if system else 6)), prefix)}
        if draw(st.booleans()):
            d["default"] = draw(st.sampled_from(TIER_NAMES))
        return d

    return {"system": doc("s", True), "org": doc("o"), "agent": doc("g")}


def compile_docs(docs: dict[str, Any]) -> Policy:
    # parse_data is parse_policy minus the YAML reader (fuzzed separately in test_model.py)
    pfs = {layer: parse_data(d, {}, f"{layer}.yaml", layer) for layer, d in docs.items()}
    return compile_policy(pfs["system"], pfs["org"], {"ag": pfs["agent"]})


def decisions(p: Policy) -> list[tuple[int, str, Any]]:
    out = []
    for cap in CAPS:
        for args in ARGS:
            v = evaluate(p, "ag", cap, args)
            out.append((v.tier, v.layer, v.rule.sort_key[:3] if v.rule else None))
    return out


def layer_tiers(p: Policy, cap: str, args: dict[str, Any]) -> dict[str, int | None]:
    v = evaluate(p, "ag", cap, args)
    return {name: lv.tier for name, lv in v.layers}


@SETTINGS
@given(docs=layers(), extra=rules(3), target=st.sampled_from(["org", "agent"]))
def test_adding_rules_to_a_lower_layer_never_undercuts_higher_layers(docs: dict[str, Any], extra: list[dict[str, Any]],
                                                                     target: str) -> None:
    before = compile_docs(docs)
    docs2 = json.loads(json.dumps(docs))
    docs2[target]["rules"] += with_ids(extra, "new")
    after = compile_docs(docs2)
    higher = ["system"] if target == "org" else ["system", "org"]
    for cap in CAPS:
        for args in ARGS:
            v = evaluate(after, "ag", cap, args)
            for _name, lv in v.layers:                      # never below any layer's own verdict
                if lv.tier is not None:
                    assert v.tier >= lv.tier
            old = layer_tiers(before, cap, args)
            for name in higher:                             # higher layers' verdicts still bind
                if old[name] is not None:
                    assert v.tier >= old[name], (cap, args, name)


@SETTINGS
@given(docs=layers(), data=st.data())
def test_rule_order_never_changes_a_decision(docs: dict[str, Any], data: Any) -> None:
    shuffled = json.loads(json.dumps(docs))
    for layer in shuffled.values():
        layer["rules"] = data.draw(st.permutations(layer["rules"]))
    assert decisions(compile_docs(docs)) == decisions(compile_docs(shuffled))


@SETTINGS
@given(docs=layers())
def test_decisions_are_deterministic(docs: dict[str, Any]) -> None:
    p = compile_docs(docs)
    first = decisions(p)
    assert decisions(p) == first                      # same compiled policy, again
    assert decisions(compile_docs(docs)) == first     # compiled afresh from the same text


def _raised(tier: str, layer: str) -> str:
    return "blocked" if layer == "system" else TIER_NAMES[max(TIER_NAMES.index(tier), APPROVAL)]


@SETTINGS
@given(docs=layers(), pattern=st.sampled_from(PATTERNS), tier=st.sampled_from(TIER_NAMES),
       target=st.sampled_from(["system", "org", "agent"]))
def test_evaluation_errors_fail_closed(docs: dict[str, Any], pattern: str, tier: str, target: str) -> None:
    """A rule whose condition cannot be evaluated gives at least what the decision would be if it
    matched (tier raised to approval_required, blocked in the system layer) and if it did not."""
    def variant(rule: dict[str, Any]) -> Policy:
        d = json.loads(json.dumps(docs))
        d[target]["rules"].append({"id": "probe", **rule})
        return compile_docs(d)

    unevaluable = variant({"capability": pattern, "tier": tier, "when": {"arg_equals": {"missing_arg": 1}}})
    no_match = variant({"capability": pattern, "tier": tier, "when": {"name_match": "zz\\.never"}})
    match = variant({"capability": pattern, "tier": _raised(tier, target)})
    for cap in CAPS:
        for args in ARGS:
            e = evaluate(unevaluable, "ag", cap, args).tier
            assert e >= evaluate(no_match, "ag", cap, args).tier
            assert e >= evaluate(match, "ag", cap, args).tier


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(docs=layers(), args=st.dictionaries(st.sampled_from(["k", "path", "content", "argv", "url", "agent"]),
                                           st.one_of(st.none(), st.integers(), st.text(max_size=8),
                                                     st.lists(st.integers(), max_size=2),
                                                     st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)),
                                           max_size=4))
def test_evaluate_never_raises_on_any_arguments(docs: dict[str, Any], args: dict[str, Any]) -> None:
    p = compile_docs(docs)
    for cap in CAPS:
        v = evaluate(p, "ag", cap, args)
        assert 0 <= v.tier <= BLOCKED
