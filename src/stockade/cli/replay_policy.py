"""The candidate policy for `stockade audit replay`: loaded from a directory, decided with the
gateway's own pure engine (`policy.engine.decision_table` over `evaluate`, and the runtime's rate
stage over an in-memory limiter fed the recorded times)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stockade.core.errors import ConfigError
from stockade.core.home import Home
from stockade.policy import loader
from stockade.policy.engine import DecisionTable, Policy, Verdict, compile_policy, decision_table, escalate
from stockade.policy.model import BLOCKED, TIERS, PolicyFile, parse_policy
from stockade.policy.ratelimit import RateLimiter
from stockade.policy.runtime import rate_states

Outcome = tuple[str, str | None, str]


def load_candidate(directory: Path, home: Home) -> Policy:
    """`DIR/org.yaml` and `DIR/agents/NAME.yaml` (the layout of a home's `policies/`; a home's root
    works too), over the built-in system layer. ConfigError names every problem."""
    d = directory / "policies" if (directory / "policies").is_dir() else directory
    if not d.is_dir():
        raise ConfigError([f"{directory}:0: not a directory"])
    org_path = d / "org.yaml"
    adir = d / "agents"
    if not org_path.is_file() and not adir.is_dir():
        raise ConfigError([f"{d}:0: no policy here (expected org.yaml and/or agents/NAME.yaml)"])
    ctx = loader.context(home)
    cat = _catalog()
    known = cat.known if cat is not None else None
    errors: list[str] = []
    org: PolicyFile | None = None
    agents: dict[str, PolicyFile] = {}
    if org_path.exists():
        try:
            org = parse_policy(loader.read_text(org_path), str(org_path), "org", ctx=ctx, known=known)
        except ConfigError as e:
            errors.extend(e.errors)
    if adir.is_dir():
        for p in sorted(adir.iterdir()):
            if p.name.startswith(".") or p.suffix != ".yaml":
                if p.suffix == ".yml":
                    errors.append(f"{p}:1: policy files must end in .yaml (this one would be ignored)")
                continue
            if not loader.AGENT_NAME.match(p.stem):
                errors.append(f"{p}:1: {p.stem!r} is not a valid agent name")
                continue
            try:
                agents[p.stem] = parse_policy(loader.read_text(p), str(p), "agent", ctx=ctx, known=known)
            except ConfigError as e:
                errors.extend(e.errors)
    if errors:
        raise ConfigError(errors)
    return compile_policy(loader.load_system(ctx), org, agents)


def _catalog() -> loader.Catalog | None:
    try:
        from stockade.policy.setup import catalog

        return catalog()
    except Exception:  # noqa: BLE001 - without the registry the names are not checked, like validate
        return None


class PolicyDecider:
    """`audit.replay.Decider` over a compiled policy: the gateway's own pure engine, decided through
    `engine.decision_table` (each distinct outcome of the argument-dependent conditions of an
    (agent, capability) is evaluated once), with the runtime's rate-limit stage over an in-memory
    limiter fed the recorded times."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.limiter = RateLimiter(None)
        self._tables: dict[tuple[str, str], DecisionTable] = {}
        # id(verdict) -> (verdict, outcome or None when rate-limited): verdicts are shared by the
        # tables' memos; keeping the verdict here keeps its id from being reused.
        self._out: dict[int, tuple[Verdict, Outcome | None]] = {}

    def _verdict(self, agent: str, capability: str, args: dict[str, Any]) -> Verdict:
        t = self._tables.get((agent, capability))
        if t is None:
            t = self._tables[(agent, capability)] = decision_table(self.policy, agent, capability)
        return t.verdict(args)

    def first(self, agent: str, capability: str, args: dict[str, Any]) -> Outcome | None:
        v = self._verdict(agent, capability, args)
        got = self._out.get(id(v))
        if got is None:
            rated = any(lv.rated for _, lv in v.layers)
            got = (v, None if rated else _outcome(v))
            if len(self._out) > 100_000:
                self._out.clear()
            self._out[id(v)] = got
        return got[1]

    def in_order(self, agent: str, capability: str, args: dict[str, Any], at: float) -> Outcome:
        """`PolicyEngine.decide` at time `at` (the same rate stage: `runtime.rate_states`, the
        pure `escalate`, a hit per rated rule unless blocked), from the table's verdict."""
        base = self._verdict(agent, capability, args)
        if not any(lv.rated for _, lv in base.layers):
            return _outcome(base)
        states = rate_states(base, agent, self.limiter, at)
        v, _retry, _exceeded = escalate(base, states)
        if v.tier != BLOCKED:
            for _, lv in v.layers:
                for r in lv.rated:
                    self.limiter.hit(agent, r, at)
        return _outcome(v)


def _outcome(v: Verdict) -> Outcome:
    return (TIERS[v.tier], v.rule.label if v.rule else None, v.layer)
