"""Build compiled policies from Python data for the policy tests."""

from __future__ import annotations

import json
from typing import Any

from stockade.policy import loader
from stockade.policy.engine import Policy, compile_policy, evaluate
from stockade.policy.model import TIERS, PolicyFile, parse_policy

CTX = {"home": "/srv/stockade-home"}
EMPTY_SYSTEM = {"version": 1, "default": "approval_required", "rules": []}


def pf(doc: dict[str, Any] | str, layer: str, fname: str | None = None, known: Any = None) -> PolicyFile:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return parse_policy(text, fname or f"{layer}.yaml", layer, ctx=CTX, known=known)


def build(org: dict[str, Any] | None = None, agents: dict[str, dict[str, Any]] | None = None,
          system: dict[str, Any] | None | str = "shipped") -> Policy:
    sysf = loader.load_system(CTX) if system == "shipped" else pf(system or EMPTY_SYSTEM, "system")
    return compile_policy(sysf, pf(org, "org") if org is not None else None,
                          {n: pf(d, "agent", f"agents/{n}.yaml") for n, d in (agents or {}).items()})


def tier(p: Policy, cap: str, args: dict[str, Any] | None = None, agent: str = "a") -> str:
    return TIERS[evaluate(p, agent, cap, args or {}).tier]


def org(*rules: dict[str, Any], default: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"version": 1, "rules": list(rules)}
    if default:
        d["default"] = default
    return d
