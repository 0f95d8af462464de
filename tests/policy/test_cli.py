"""`stockade init --policy`, `policy validate | explain | diff` (offline, --json), doctor."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from tests.conftest import cli_json, cli_quick, quick_json, run_cli


@pytest.mark.parametrize("template", ["personal", "strict", "open"])
def test_init_writes_the_chosen_template_0600_once(tmp_path: Path, template: str) -> None:
    h = tmp_path / "h"
    out = cli_json("init", "--policy", template, home=h)
    org = h / "policies" / "org.yaml"
    assert str(org) in out["created"]
    assert stat.S_IMODE(org.stat().st_mode) == 0o600
    assert f"template: {template}" in org.read_text()
    org.write_text("version: 1\ndefault: blocked\n")
    out = cli_json("init", "--policy", "open", home=h)            # idempotent: never overwrites
    assert str(org) not in out["created"] and org.read_text() == "version: 1\ndefault: blocked\n"


def test_templates_give_the_promised_tiers(tmp_path: Path) -> None:
    """The templates are under test here, not the CLI: each home `init` wrote is compiled and
    evaluated in this process (what `policy explain` does, without loading the capability
    registry twice per question); `policy explain` answers the system-layer question."""
    from tests.policy.policy_helpers import tier

    from stockade.core.home import Home
    from stockade.policy import loader
    from stockade.policy import setup as policy_setup

    cat = policy_setup.catalog()
    homes, pols = {}, {}
    for name in ("personal", "strict", "open"):
        homes[name] = tmp_path / name
        cli_quick("init", "--policy", name, home=homes[name])
        cli_quick("agent", "create", "a", home=homes[name])
        pols[name] = loader.load_home(Home(homes[name]), cat)

    def t(name: str, cap: str, args: dict) -> str:
        return tier(pols[name], cap, args)

    read = ("filesystem.read", {"path": "a.txt"})
    write = ("filesystem.write", {"path": "a.txt", "content": "x"})
    run = ("process.run", {"argv": ["ls"]})
    net = ("network.http_request", {"method": "GET", "url": "https://example.com/"})
    assert [t("personal", *c) for c in (read, write, run, net)] == \
        ["autonomous", "notify", "approval_required", "approval_required"]
    assert [t("strict", *c) for c in (read, write, run, net)] == \
        ["autonomous", "approval_required", "approval_required", "approval_required"]
    assert [t("open", *c) for c in (read, write, run, net)] == ["autonomous", "autonomous", "notify", "notify"]
    for h in homes.values():   # every template keeps the system layer's protections
        assert quick_json("policy", "explain", "--agent", "a", "--capability", "filesystem.write", "--args",
                          json.dumps({"path": "/etc/x", "content": "x"}), home=h)["tier"] == "blocked"


def test_validate_reports_errors_with_file_line_and_exit_1(tmp_path: Path) -> None:
    f = tmp_path / "org.yaml"
    f.write_text("version: 1\nrules:\n  - capability: filesystem.read\n    tier: sometimes\n"
                 "  - capability: process.run\n    tier: blocked\n    when: {argv_match: '(a)\\1'}\n")
    p = run_cli("policy", "validate", str(f), "--json", check=False)
    assert p.returncode == 1
    d = json.loads(p.stdout)
    assert d["valid"] is False
    assert any(e.startswith(f"{f}:4:") for e in d["errors"]) and any(e.startswith(f"{f}:7:") for e in d["errors"])
    p = run_cli("policy", "validate", str(f), check=False)
    assert p.returncode == 1 and f"{f}:4:" in p.stderr
    assert run_cli("policy", "validate", str(tmp_path / "nope.yaml"), check=False).returncode == 2


def test_validate_warnings_keep_exit_0(tmp_path: Path) -> None:
    f = tmp_path / "org.yaml"
    f.write_text("version: 1\nrules:\n  - {id: a, capability: system.time, tier: notify}\n"
                 "  - {id: b, capability: system.time, tier: autonomous, when: {url_host_in: [x.org]}}\n"
                 "  - {id: c, capability: weather.forecast, tier: notify}\n")
    d = cli_json("policy", "validate", str(f))
    assert d["valid"] and d["rules"] == 3
    text = "\n".join(d["warnings"])
    assert f"{f}:4: rule b is unreachable" in text
    assert "condition url_host_in reads url, which system.time does not take" in text
    assert f"{f}:5: capability 'weather.forecast' is not provided" in text


def test_validate_agent_file_against_the_homes_org(home: Path) -> None:
    f = home / "policies" / "agents" / "alice.yaml"
    f.write_text("version: 1\nrules:\n  - {id: w, capability: vault.get, tier: autonomous}\n")
    d = cli_json("policy", "validate", str(f), home=home)
    assert d["layer"] == "agent"
    assert any("rule w is unreachable: a higher layer always blocks vault.get" in w for w in d["warnings"])


def test_explain_offline(home: Path) -> None:
    for agent in ("a", "bob"):
        cli_quick("agent", "create", agent, home=home)
    (home / "policies" / "agents" / "alice.yaml").write_text(
        "version: 1\nrules:\n  - {id: no-net, capability: network.http_request, tier: blocked,"
        " when: {url_host_in: [evil.example]}}\n")
    d = cli_json("policy", "explain", "--agent", "alice", "--capability", "network.http_request",
                 "--args", '{"method": "GET", "url": "https://evil.example/x"}', home=home)
    assert d["tier"] == "blocked" and d["layer"] == "agent" and d["rule"] == "no-net" and d["line"] == 3
    assert d["file"].endswith("agents/alice.yaml")
    assert d["layers"]["org"]["tier"] == "approval_required" and d["layers"]["system"]["tier"] is None
    assert d["visible"] is True
    assert d["rate_limits"][0]["rule"] == "network" and d["rate_limits"][0]["count"] == 0
    d = cli_json("policy", "explain", "--agent", "bob", "--capability", "network.http_request",
                 "--args", '{"method": "GET", "url": "https://evil.example/x"}', home=home)
    assert d["tier"] == "approval_required"
    p = run_cli("policy", "explain", "--agent", "a", "--capability", "vault.get", home=home)
    assert "tier: blocked" in p.stdout and "system.yaml" in p.stdout and "hidden" in p.stdout
    p = run_cli("policy", "explain", "--agent", "a", "--capability", "system.time", "--args", "[1]",
                home=home, check=False)
    assert p.returncode == 2


def test_explain_refuses_an_invalid_home_policy(home: Path) -> None:
    (home / "policies" / "org.yaml").write_text("version: 1\nrules: 7\n")
    p = run_cli("policy", "explain", "--agent", "a", "--capability", "system.time", "--json", home=home, check=False)
    assert p.returncode == 2 and "org.yaml:2:" in p.stdout


def test_diff_lists_changed_pairs(tmp_path: Path, home: Path) -> None:
    old = tmp_path / "old.yaml"
    new = tmp_path / "new.yaml"
    old.write_text("version: 1\ndefault: notify\nrules:\n  - {capability: filesystem.read, tier: autonomous}\n")
    new.write_text("version: 1\ndefault: notify\nrules:\n  - {capability: filesystem.read, tier: autonomous}\n"
                   "  - {capability: filesystem.read, tier: blocked, when: {path_under: /workspace/private}}\n"
                   "  - {capability: process.run, tier: approval_required}\n")
    d = cli_json("policy", "diff", str(old), str(new))
    pairs = {(c["capability"], c["old"], c["new"]) for c in d["changes"]}
    assert ("filesystem.read", "autonomous", "blocked") in pairs
    assert ("process.run", "notify", "approval_required") in pairs
    assert all(c["capability"] in ("filesystem.read", "process.run") for c in d["changes"])
    blocked = next(c for c in d["changes"] if c["new"] == "blocked")
    assert blocked["example_args"]["path"].startswith("/workspace/private")
    assert cli_json("policy", "diff", str(old), str(old))["changed"] == 0
    # homes / policies dirs work too
    d = cli_json("policy", "diff", str(home), str(home / "policies"))
    assert d["changed"] == 0


def test_doctor_reports_policy(home: Path) -> None:
    d = cli_json("doctor", home=home)
    pol = d["checks"]["policy"]
    assert pol["status"] == "ok" and pol["rules"] > 20
    (home / "policies" / "org.yaml").write_text("version: 1\nrules:\n  - {capability: x.y, tier: never}\n")
    p = run_cli("doctor", "--json", home=home, check=False)
    pol = json.loads(p.stdout)["checks"]["policy"]
    assert pol["status"] == "critical" and any("org.yaml:3:" in e for e in pol["errors"])


def test_explain_names_the_nearest_known_agent_and_capability(home: Path) -> None:
    cli_quick("agent", "create", "bob", home=home)
    p = run_cli("policy", "explain", "--agent", "bobb", "--capability", "system.time", home=home, check=False)
    assert p.returncode == 2 and "unknown agent 'bobb'" in p.stderr and "did you mean 'bob'" in p.stderr
    p = run_cli("policy", "explain", "--agent", "bob", "--capability", "filesystem.wirte", home=home, check=False)
    assert p.returncode == 2 and "did you mean 'filesystem.write'" in p.stderr
    p = run_cli("policy", "explain", "--agent", "nobody-like-this", "--capability", "system.time", "--json",
                home=home, check=False)
    assert p.returncode == 2 and "stockade agent list" in json.loads(p.stdout)["error"]["message"]


def test_validate_counts_in_words(tmp_path: Path) -> None:
    bad = tmp_path / "org.yaml"
    bad.write_text("version: 1\nrules:\n  - {capability: system.time, tier: sometimes}\n")
    p = run_cli("policy", "validate", str(bad), check=False)
    assert "(1 error)" in p.stdout and "errors)" not in p.stdout
    good = tmp_path / "ok.yaml"
    good.write_text("version: 1\nrules:\n  - {capability: system.time, tier: autonomous}\n")
    assert "(1 rule, layer org)" in run_cli("policy", "validate", str(good)).stdout
