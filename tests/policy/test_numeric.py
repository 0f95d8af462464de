"""Numeric conditions on arguments (issue 18, traders): arg_lt / arg_gt / arg_between on a JSON
pointer, pure; "orders up to X run on their own, above X wait for me" is one rule; anything that is
not a plain number cannot be evaluated and never loosens the tier."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.policy.policy_helpers import build, org, pf, tier

from stockade.core.errors import ConfigError
from stockade.policy.conditions import CannotEvaluate, compile_when, number

CAP = "exchange.place_order"   # not a strict category: a pack's name


def small_orders_alone(limit: float = 100) -> Any:
    # One rule; everything else falls to the default (approval_required).
    return build(org({"capability": CAP, "tier": "autonomous", "when": {"arg_lt": {"/notional": limit}}},
                     default="approval_required"), system=None)


def test_orders_below_the_limit_run_alone_others_wait() -> None:
    p = small_orders_alone()
    assert tier(p, CAP, {"notional": 99.99}) == "autonomous"
    assert tier(p, CAP, {"notional": "42.5"}) == "autonomous"          # exchange APIs send decimals as strings
    assert tier(p, CAP, {"notional": 100}) == "approval_required"
    assert tier(p, CAP, {"notional": 1e9}) == "approval_required"


@pytest.mark.parametrize("value", [True, None, "1e1", " 5", "5 ", "0x10", "NaN", "Infinity", "-", "", "1,5",
                                   [1], {"v": 1}, "٣", "１"])
def test_what_is_not_a_plain_number_never_runs_alone(value: Any) -> None:
    assert tier(small_orders_alone(), CAP, {"notional": value}) == "approval_required"


def test_missing_argument_or_nested_pointer() -> None:
    assert tier(small_orders_alone(), CAP, {}) == "approval_required"
    p = build(org({"capability": CAP, "tier": "notify", "when": {"arg_between": {"/order/qty": [1, 10]},
                                                                  "arg_gt": {"/order/price": 0}}},
                  default="approval_required"), system=None)
    assert tier(p, CAP, {"order": {"qty": 10, "price": "3.1"}}) == "notify"
    assert tier(p, CAP, {"order": {"qty": 11, "price": "3.1"}}) == "approval_required"
    assert tier(p, CAP, {"order": {"qty": 1, "price": 0}}) == "approval_required"
    assert tier(p, CAP, {"order": {"qty": 5}}) == "approval_required"


def test_a_definite_false_wins_over_cannot_evaluate() -> None:
    c = compile_when({"arg_lt": {"/a": 1, "/b": 1}})
    assert c is not None
    assert c("x", CAP, {"a": 5}) is False and c("x", CAP, {"b": 5}) is False
    with pytest.raises(CannotEvaluate):
        c("x", CAP, {"a": 0})


def test_negated_numeric_condition_fails_closed() -> None:
    p = build(org({"capability": CAP, "tier": "autonomous"},
                  {"capability": CAP, "tier": "blocked", "when": {"not": {"arg_lt": {"/notional": 1000}}}}),
              system=None)
    assert tier(p, CAP, {"notional": 5}) == "autonomous"
    assert tier(p, CAP, {"notional": 5000}) == "blocked"
    assert tier(p, CAP, {"notional": "lots"}) in ("approval_required", "blocked")


@pytest.mark.parametrize("when", [{"arg_lt": {"notional": 1}}, {"arg_lt": {"/x": "1"}}, {"arg_lt": {"/x": True}}],
                         ids=["no-slash", "string-bound", "bool-bound"])
def test_bad_conditions_are_refused_at_load(when: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        pf(org({"capability": CAP, "tier": "notify", "when": when}), "org")


def test_between_bounds_are_checked() -> None:
    with pytest.raises(ConfigError, match="above high"):
        pf(org({"capability": CAP, "tier": "notify", "when": {"arg_between": {"/x": [5, 1]}}}), "org")
    with pytest.raises(ConfigError, match=r"\[low, high\]"):
        pf(org({"capability": CAP, "tier": "notify", "when": {"arg_between": {"/x": 5}}}), "org")


@given(st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=False, allow_infinity=False)),
       st.integers(-1000, 1000))
def test_comparisons_are_exact(x: int | float, limit: int) -> None:
    c = compile_when({"arg_lt": {"/v": limit}})
    assert c is not None
    assert c("a", CAP, {"v": x}) == (Decimal(repr(x)) < limit if isinstance(x, float) else x < limit)
    assert number(str(x)) == Decimal(str(x)) if isinstance(x, int) else True
