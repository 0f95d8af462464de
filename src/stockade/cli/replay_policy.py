"""The candidate policy for `stockade audit replay`: loaded from a directory, decided with the
gateway's own pure engine (`policy.engine.evaluate`, `policy.runtime.PolicyEngine` for rate limits
over an in-memory limiter fed the recorded times)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stockade.core.errors import ConfigError
from stockade.core.home import Home
from stockade.policy import loader
from stockade.policy.engine import Policy, _static, compile_policy, evaluate
from stockade.policy.model import TIERS, PolicyFile, parse_policy
from stockade.policy.ratelimit import RateLimiter
from stockade.policy.runtime import PolicyEngine

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
    """`audit.replay.Decider` over a compiled policy: the same code path as the running gateway."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._at = 0.0
        self.engine = PolicyEngine(policy, RateLimiter(None), clock=lambda: self._at)
        # (agent, capability) -> the verdict when no rule that could decide looks at the arguments
        self._fixed: dict[tuple[str, str], Outcome | None] = {}
        self._varies: set[tuple[str, str]] = set()

    def first(self, agent: str, capability: str, args: dict[str, Any]) -> Outcome | None:
        key = (agent, capability)
        if key in self._fixed:
            return self._fixed[key]
        out = self._first(agent, capability, args)
        if key not in self._varies and len(self._varies) + len(self._fixed) < 100_000:
            if self._argument_free(agent, capability):
                self._fixed[key] = out
            else:
                self._varies.add(key)
        return out

    def _argument_free(self, agent: str, capability: str) -> bool:
        """True when every rule that covers (agent, capability) decides without the arguments."""
        for idx in self.policy.layers(agent):
            if idx is None:
                continue
            for b in idx.buckets(capability):
                if any(_static(r, agent, capability) is None for r in b.rules):
                    return False
        return True

    def _first(self, agent: str, capability: str, args: dict[str, Any]) -> Outcome | None:
        v = evaluate(self.policy, agent, capability, args)
        for _, lv in v.layers:
            if lv.rated:
                return None
        return (TIERS[v.tier], v.rule.label if v.rule else None, v.layer)

    def in_order(self, agent: str, capability: str, args: dict[str, Any], at: float) -> Outcome:
        self._at = at
        d = self.engine.decide(agent, capability, args)
        return (d.tier, d.rule, d.layer or "?")
