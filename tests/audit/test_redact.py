"""Secrets never reach the audit log: secret-named arguments and vault-resolved values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.audit import record as R
from stockade.audit.redact import REDACTED, SecretValue, redact


def test_arguments_the_agent_chose_are_never_hidden() -> None:
    """Issue 13 item 2: a key named like a secret hides nothing (the owner must see what runs);
    only vault-resolved values are replaced, by their reference."""
    args = {"path": "/w/x", "password": "hunter2", "nested": {"api_key": "k-123", "Authorization": "Bearer z"},
            "list": [{"token": "t"}], "empty_secret": ""}
    assert redact(args) == args
    assert redact({"a": "x VAL-123456 y"}, [SecretValue("VAL-123456", "k")]) == {"a": "x ${secret:k} y"}


@settings(max_examples=100, deadline=None)
@given(secret=st.text(min_size=6, max_size=30).filter(lambda s: s not in REDACTED and REDACTED not in s),
       prefix=st.text(max_size=10), suffix=st.text(max_size=10))
def test_vault_values_never_reach_the_encoded_record(secret: str, prefix: str, suffix: str) -> None:
    args = {"cmd": f"{prefix}{secret}{suffix}", "env": [secret], "raw": secret.encode()}
    safe = redact(args, [secret])
    body, _ = R.build({"kind": "call", "args": safe}, 1, 1, bytes(32))
    assert secret.encode() not in body
