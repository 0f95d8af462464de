"""Bad policy input is refused at load with file:line; the loader never crashes (fuzzed)."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.core.errors import ConfigError
from stockade.policy import loader
from stockade.policy import setup as policy_setup
from stockade.policy.conditions import compile_regex
from stockade.policy.model import parse_policy

CAT = policy_setup.catalog()


def load(text: str):  # type: ignore[no-untyped-def]
    return parse_policy(text, "org.yaml", "org", known=CAT.known)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load(text)
    return ei.value.errors


@pytest.mark.parametrize("text,line,needle", [
    ("version: 1\nrules:\n  - capability: system.time\n    tier: autonomous\n    colour: red\n", 5, "unknown key"),
    ("version: 1\nbogus: 1\n", 2, "unknown key"),
    ("version: 2\n", 1, "version"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: sometimes\n", 4, "tier"),
    ("version: 1\ndefault: maybe\n", 2, "default"),
    ("version: 1\nrules: {a: 1}\n", 2, "rules"),
    ("version: 1\nrules:\n  - capability: 7\n    tier: notify\n", 3, "capability"),
    ("version: 1\nrules:\n  - capability: System.Time\n    tier: notify\n", 3, "capability"),
    ("version: 1\nrules:\n  - capability: 'a.*.b'\n    tier: notify\n", 3, "capability"),
    ("version: 1\nrules:\n  - capability: filesystem.raed\n    tier: notify\n", 3, "unknown capability"),
    # another category: a pack may add it later (accepted; `validate` warns)
    ("version: 1\nrules:\n  - capability: proces.run\n    tier: notify\n", None, None),
    ("version: 1\nrules:\n\n  - capability: process.run\n    tier: notify\n    when:\n"
     "      argv_match: '(unclosed'\n",
     7, "invalid regular expression"),
    ("version: 1\nrules:\n  - capability: process.run\n    tier: blocked\n    when: {argv_match: '(a)\\1'}\n",
     5, "RE2"),
    ("version: 1\nrules:\n  - capability: process.run\n    tier: blocked\n    when: {argv_match: '(?<=x)y'}\n",
     5, "lookaround"),
    ("version: 1\nrules:\n  - {id: x, capability: system.time, tier: notify}\n"
     "  - {id: x, capability: system.info, tier: notify}\n",
     4, "duplicate id"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    when: {path_under: relative/p}\n", 5,
     "absolute"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    when: {colour: red}\n", 5,
     "unknown condition"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    when: {content_size_gte: -1}\n", 5,
     "non-negative"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    when: {content_size_gte: '10'}\n", 5,
     "non-negative"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    when: {arg_equals: [1]}\n", 5, "mapping"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    when: {url_host_in: []}\n", 5, "list"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    when: {not: {}}\n", 5, "non-empty"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    when: {path_args: [path]}\n", 5,
     "path_"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: blocked\n    rate_limit: {max: 5, window: 1h}\n", 5,
     "more restrictive"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    rate_limit: {max: 0, window: 1h}\n", 5,
     "max"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    rate_limit: {max: 5, window: soon}\n", 5,
     "window"),
    ("version: 1\nrules:\n  - capability: system.time\n    tier: notify\n    rate_limit: {max: '5', window: 1h}\n", 5,
     "max"),
    ("version: 1\nsandbox: {memory: lots}\n", 2, "size"),
    ("version: 1\nsandbox: {seccomp: lax}\n", 2, "seccomp"),
    ("version: 1\nsandbox: {egress: [anywhere]}\n", 2, "host:port"),
    ("version: 1\nversion: 1\n", 2, "duplicate key"),
    ("version: 1\nrules:\n  - [\n", 4, ""),
    ("- 1\n", 1, "mapping"),
    ("", 1, "empty"),
])
def test_bad_input_is_refused_with_file_and_line(text: str, line: int | None, needle: str | None) -> None:
    if line is None:
        load(text)
        return
    errs = errors_of(text)
    assert any(e.startswith(f"org.yaml:{line}:") for e in errs), errs
    assert any(needle.lower() in e.lower() for e in errs), errs


def test_every_error_is_reported_at_once() -> None:
    text = ("version: 1\nrules:\n  - {id: a, capability: filesystem.nope, tier: notify}\n"
            "  - {id: a, capability: process.run, tier: notify, when: {argv_match: '(?=a)'}}\n")
    errs = errors_of(text)
    assert len(errs) == 3 and {e.split(":")[1] for e in errs} == {"3", "4"}


@pytest.mark.parametrize("rx", [r"(a+)+$", r"(a*)*b", r"(\w+\s?)+$", r"(a|ab)*c", r"((a)+)*$", r"(?:x|x)+y",
                                r"(.|\n)*$", r"(a?){30}a{30}"])
@pytest.mark.timeout(120)
def test_backtracking_patterns_match_in_linear_time(rx: str) -> None:
    """A hang guard, not a timing assertion: each pattern takes Python's backtracking `re`
    exponential time on these 60 characters (hours), RE2 a linear scan, so no shape is refused."""
    compiled = compile_regex(rx)
    for short in ("", "a", "ab", "aax", "xy", "aaaaaaaac"):    # the same answers as Python's re
        assert (compiled.search(short) is None) is (re.search(rx, short) is None), (rx, short)
    compiled.search("a" * 30 + "x" * 30 + "!")                 # returns at all: that is the test


@pytest.mark.parametrize("rx,why", [(r"(a)\1", "escape"), (r"(?=x)y", "perl operator"), (r"(?<!x)y", "perl operator"),
                                    (r"a{2000}", "repetition"), (r"(?x) a", "perl operator"), (r"(", "missing")])
def test_what_re2_cannot_do_is_refused_with_its_reason(rx: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"RE2 syntax.*{why}"):
        compile_regex(rx)


@pytest.mark.parametrize("rx", [r"^git (status|log)( |$)", r"rm\s+-rf", r"[a-z]{1,8}\.(py|sh)$", r"(ab|cd)+",
                                r"^(curl|wget)\s", r"\bsudo\b"])
def test_ordinary_regexes_accepted(rx: str) -> None:
    assert compile_regex(rx).pattern == rx


def test_shipped_layers_and_templates_are_valid_and_warning_free() -> None:
    from stockade.policy import analysis

    system = loader.load_system({"home": "/x"})
    assert all(r.tier == 3 for r in system.rules)                 # the system layer only blocks
    for name in loader.TEMPLATES:
        pf = parse_policy(loader.template_text(name), f"{name}.yaml", "org", known=CAT.known)
        assert pf.rules
        assert [w for w in analysis.warnings(pf, CAT) if "not provided" not in w and "matches no known" not in w] == []


def test_validate_warns_about_unreachable_rules_and_missing_arguments() -> None:
    from stockade.policy import analysis
    from stockade.policy.engine import compile_policy

    pf = load(json.dumps({"version": 1, "rules": [
        {"id": "all", "capability": "system.time", "tier": "notify"},
        {"id": "dead", "capability": "system.time", "tier": "autonomous", "when": {"arg_equals": {"x": 1}}},
        {"id": "nourl", "capability": "system.info", "tier": "notify", "when": {"url_host_in": ["a.com"]}},
        {"id": "under-system", "capability": "vault.get", "tier": "autonomous"},
        {"id": "ok", "capability": "network.http_request", "tier": "notify", "when": {"url_host_in": ["a.com"]}},
    ]}))
    higher = compile_policy(loader.load_system({"home": "/x"}), None, {})
    w = analysis.warnings(pf, CAT, higher)
    text = "\n".join(w)
    assert re.search(r"org.yaml:\d+: rule dead is unreachable", text)
    assert "x, which system.time does not take" in text
    assert "url, which system.info does not take" in text
    assert "rule under-system is unreachable: a higher layer always blocks" in text
    assert "rule ok" not in text


# -- fuzzing: any text or structure gives a PolicyFile or a ConfigError, nothing else -----------
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**7), st.text(max_size=12),
                    st.sampled_from(["notify", "blocked", "*", "a.*", "system.time", "1h", "(a+)+", "/workspace"]))
_json = st.recursive(_scalar, lambda c: st.one_of(st.lists(c, max_size=4),
                                                  st.dictionaries(st.sampled_from(
                                                      ["version", "rules", "default", "capability", "tier", "when",
                                                       "id", "reason", "rate_limit", "max", "window", "on_exceed",
                                                       "path_under", "argv_match", "not", "sandbox", "x"]), c,
                                                      max_size=5)), max_leaves=20)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_json)
def test_loader_fuzz_structures(doc: object) -> None:
    try:
        load(json.dumps(doc))
    except ConfigError as e:
        assert e.errors and all(re.match(r"^org\.yaml:\d+: ", m) for m in e.errors), e.errors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200))
def test_loader_fuzz_text(text: str) -> None:
    try:
        load(text)
    except ConfigError as e:
        assert all(re.match(r"^org\.yaml:\d+: ", m) for m in e.errors), e.errors


@settings(max_examples=300, deadline=None)
@given(rx=st.text(alphabet="ab()|*+?{}[]\\.^$,0123", max_size=16))
def test_regex_checker_never_crashes(rx: str) -> None:
    with contextlib.suppress(ValueError):
        compile_regex(rx)


def test_planned_catalog_matches_the_definitions() -> None:
    """The fallback catalog (used when the registry cannot load) must not drift from the schemas."""
    from stockade.capabilities.registry import load_registry
    from stockade.policy.loader import PLANNED

    reg = load_registry()
    for name, args in PLANNED.items():
        assert args == frozenset(reg.get(name).input_schema.get("properties", {})), name
