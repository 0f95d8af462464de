"""Pure parts: the canonical-argument hash and the decision state machine (property tests),
the HTML escaping of every page, and the CLI's event line sanitising."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.approvals.core import (
    APPROVED,
    EXPIRED,
    PENDING,
    REJECTED,
    STATUSES,
    YES,
    args_hash,
    canonical_args,
    transition,
)
from stockade.cli.approvals import _event_line
from stockade.supervision.dashboard import views

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


@settings(max_examples=150)
@given(objects)
def test_hash_ignores_key_order_and_canonical_form_has_no_spaces(args: dict[str, Any]) -> None:
    reordered = dict(reversed(list(args.items())))
    assert args_hash(args) == args_hash(reordered)
    c = canonical_args(args)
    assert json.loads(c) == args
    assert c == json.dumps(args, sort_keys=True, separators=(",", ":"))


@settings(max_examples=150)
@given(objects, objects)
def test_different_arguments_give_different_hashes(a: dict[str, Any], b: dict[str, Any]) -> None:
    if a != b:
        assert args_hash(a) != args_hash(b)


@settings(max_examples=300)
@given(st.sampled_from(STATUSES), st.sampled_from(["approve", "reject", "expire"]),
       st.floats(0, 1000), st.floats(0, 1000))
def test_transition_properties(status: str, action: str, now: float, expires: float) -> None:
    t = transition(status, action, now, expires)
    if status != PENDING:
        # Decisions are final: nothing but a pending approval ever changes.
        assert t.new_status is None
        assert t.conflict == (action != "expire" and (status in YES) != (action == "approve"))
    else:
        assert t.new_status in (None, APPROVED, REJECTED, EXPIRED)
        if now >= expires:
            assert t.new_status == EXPIRED      # too late to approve anything
        elif action == "approve":
            assert t.new_status == APPROVED
        elif action == "reject":
            assert t.new_status == REJECTED
    if t.new_status == APPROVED:
        assert now < expires
    if action == "approve" and (status == EXPIRED or (status == PENDING and now >= expires)):
        assert t.error == "ApprovalExpired"


HOSTILE = st.text(alphabet=st.sampled_from(list("<>&\"'`=/ scriptimgonerrorx()") + ["\x1b", "\u202e"]), max_size=40)


MARKERS = {("span", "esc"), ("p", "warn")}   # the page's own highlighting of escapes and warning


def _structure(page: str) -> list[tuple[str, tuple[str, ...]]]:
    """Tags and attribute names of a page: what an injection would have to change (leaving out
    the markers the page adds around escaped characters)."""
    out: list[tuple[str, tuple[str, ...]]] = []

    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if (tag, dict(attrs).get("class")) not in MARKERS:
                out.append((tag, tuple(sorted(k for k, _ in attrs))))

    P().feed(page)
    return out


def _card(agent: str, cap: str, value: str) -> str:
    a = {"approval": "apr_1", "status": "pending", "agent": agent, "capability": cap, "args": {"x": value},
         "args_hash": "0" * 64, "created": 0, "expires": 1, "rule": value, "policy_reason": value or "r",
         "reason": value or "r", "result": {"out": value}}
    return views.approvals([a], [], "c") + views.agents(
        [{"name": agent, "status": "active", "created": 0, "pending": 0, "tiers": {cap: "notify"}, "sandbox": None}],
        "c")


@settings(max_examples=150)
@given(HOSTILE, HOSTILE, HOSTILE)
def test_agent_strings_cannot_change_page_structure(agent: str, cap: str, value: str) -> None:
    assert _structure(_card(agent, cap, value)) == _structure(_card("a", "b", "c" if value else ""))


def test_event_line_escapes_terminal_controls() -> None:
    ev = {"ts": 0, "severity": "info", "kind": "call.notify\x1b[2J",
          "data": {"agent": "a\x1b]0;x\x07", "capability": "c", "args": {"p": "\x1b[31mred\x9b"}}}
    line = _event_line(ev)
    assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line
