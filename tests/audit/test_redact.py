"""Secrets never reach the audit log: secret-named arguments and vault-resolved values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.audit import record as R
from stockade.audit.redact import REDACTED, redact


def test_secret_named_arguments_are_redacted() -> None:
    args = {"path": "/w/x", "password": "hunter2", "nested": {"api_key": "k-123", "Authorization": "Bearer z"},
            "list": [{"token": "t"}], "empty_secret": ""}
    out = redact(args)
    assert out["password"] == REDACTED and out["nested"]["api_key"] == REDACTED
    assert out["nested"]["Authorization"] == REDACTED and out["list"][0]["token"] == REDACTED
    assert out["path"] == "/w/x" and out["empty_secret"] == ""
    assert args["password"] == "hunter2"          # a copy: the call itself still gets its arguments


@settings(max_examples=100, deadline=None)
@given(secret=st.text(min_size=6, max_size=30).filter(lambda s: s not in REDACTED and REDACTED not in s),
       prefix=st.text(max_size=10), suffix=st.text(max_size=10))
def test_vault_values_never_reach_the_encoded_record(secret: str, prefix: str, suffix: str) -> None:
    args = {"cmd": f"{prefix}{secret}{suffix}", "env": [secret], "raw": secret.encode()}
    safe = redact(args, [secret])
    body, _ = R.build({"kind": "call", "args": safe}, 1, 1, bytes(32))
    assert secret.encode() not in body
