"""egress settings and the policy-file fallback: bad values are refused with file context."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade.core.errors import ConfigError
from stockade.core.home import Home
from stockade.egress.manager import Settings, load_settings, read_egress_from_files, system_resolver


def home_with(tmp_path: Path, egress_yaml: str) -> Home:
    (tmp_path / "policies" / "agents").mkdir(parents=True)
    (tmp_path / "stockade.yaml").write_text("version: 1\n" + egress_yaml)
    return Home.at(tmp_path)


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(home_with(tmp_path, ""))
    assert s.subnet == Settings.subnet and s.resolver == system_resolver() and s.refresh == 300


def test_values(tmp_path: Path) -> None:
    s = load_settings(home_with(tmp_path, "egress:\n  resolver: 203.0.113.53\n  refresh: 1m\n  subnet: 10.99.0.0/24\n"))
    assert (s.resolver, s.refresh, s.subnet) == ("203.0.113.53", 60.0, "10.99.0.0/24")
    assert load_settings(home_with(tmp_path / "n", "egress:\n  resolver: null\n")).resolver is None


@pytest.mark.parametrize("bad", ["resolver: dns.google", "resolver: '::1'", "subnet: 10.0.0.0/30", "subnet: x",
                                 "refresh: soon", "typo: 1"])
def test_bad_values_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings(home_with(tmp_path, f"egress:\n  {bad}\n"))
    assert "egress" in "; ".join(ei.value.errors)


def test_policy_overlay(tmp_path: Path) -> None:
    h = home_with(tmp_path, "")
    (h.policies / "org.yaml").write_text("version: 1\nsandbox:\n  egress: ['a.example:443']\n")
    assert read_egress_from_files(h, "bob") == ["a.example:443"]
    (h.policies / "agents" / "bob.yaml").write_text("version: 1\nsandbox:\n  egress: []\n")
    assert read_egress_from_files(h, "bob") == []          # the agent file replaces the org default
    (h.policies / "agents" / "bob.yaml").write_text("version: 1\nsandbox:\n  egress: 'x:1'\n")
    with pytest.raises(ConfigError):
        read_egress_from_files(h, "bob")
