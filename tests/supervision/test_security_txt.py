"""`/.well-known/security.txt` (RFC 9116): built from the owner's config, served without login."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from stockade.core.config import SecurityConfig
from stockade.supervision import securitytxt

from .helpers import Dash, make_home, serve

NOW = 1_800_000_000.0


def test_no_contact_means_no_file() -> None:
    assert securitytxt.build(SecurityConfig(), "https://h/.well-known/security.txt", NOW) is None


def test_required_fields_and_expiry_from_config() -> None:
    cfg = SecurityConfig(contact="mailto:sec@example.org", advisories="https://example.org/advisories",
                         languages="en, de", expires_days=30)
    text = securitytxt.build(cfg, "https://127.0.0.1:1/.well-known/security.txt", NOW)
    assert text is not None and text.endswith("\n")
    fields = [line.split(": ", 1) for line in text.splitlines()]
    assert ["Contact", "mailto:sec@example.org"] in fields and ["Contact", "https://example.org/advisories"] in fields
    assert ["Preferred-Languages", "en, de"] in fields
    assert ["Canonical", "https://127.0.0.1:1/.well-known/security.txt"] in fields
    expires = dict(f for f in fields if f[0] == "Expires")["Expires"]
    assert expires == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW + 30 * 86400))


def test_a_placeholder_contact_is_refused_by_config() -> None:
    with pytest.raises(ValueError):
        SecurityConfig(contact="security team")


@pytest.mark.xdist_group("supervision-dash")
def test_served_by_the_dashboard_without_login(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    cfg = yaml.safe_load((home / "stockade.yaml").read_text())
    cfg["security"] = {"contact": "mailto:owner@example.org"}
    (home / "stockade.yaml").write_text(yaml.safe_dump(cfg))
    srv = serve(home)
    try:
        r = Dash(srv).c.get("/.well-known/security.txt")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "Contact: mailto:owner@example.org" in r.text and "Expires: " in r.text
        assert f"Canonical: https://127.0.0.1:{Dash(srv).port}/.well-known/security.txt" in r.text
    finally:
        srv.stop()
