"""`stockade vault ...` on a stopped home and against a running gateway (admin socket)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import jsonschema
import yaml
from tests.conftest import cli_json, cli_quick, quick_json, run_cli, start_server

import stockade.vault as vault_pkg
from stockade.core.home import Home
from stockade.vault.setup import doctor

PW = "cli test passphrase"
ENV = {"STOCKADE_VAULT_PASSPHRASE": PW}
VALUE = "tok_\u2713_not_in_output_9f8e7d"


def vinit(home: Path) -> None:
    # setup (and the audit exports, agent creation below) in this process: the CLI's own
    # answers are checked through run_cli/cli_json
    assert quick_json("vault", "init", home=home, env=ENV)["initialized"] is True


def test_offline_lifecycle(home: Path, tmp_path: Path) -> None:
    vinit(home)
    assert (home / "vault.db").stat().st_mode & 0o777 == 0o600
    again = run_cli("vault", "init", "--json", home=home, env=ENV, check=False)
    assert again.returncode == 2 and json.loads(again.stdout)["error"]["type"] == "VaultExists"

    out = cli_json("vault", "set", "exchange key", "--all-agents", "--scope", "network.http_request", "--host",
                   "api.example.com",
                   home=home, env=ENV, input=VALUE + "\n")
    assert out["name"] == "exchange key" and out["hosts"] == ["api.example.com"] and VALUE not in json.dumps(out)
    # the trailing newline of stdin was stripped; --raw keeps it
    vf = tmp_path / "v.txt"
    vf.write_bytes(b"raw\n")
    cli_json("vault", "set", "raw", "--all-agents", "--disclose-to-agent", "--scope", "process.run,filesystem.read",
             "--value-file", str(vf), "--raw",
             home=home, env=ENV)
    listed = cli_json("vault", "list", home=home)
    assert [s["name"] for s in listed["secrets"]] == ["exchange key", "raw"]
    assert listed["secrets"][1]["scope"] == ["filesystem.read", "process.run"]
    text = run_cli("vault", "list", home=home).stdout
    for blob in (json.dumps(listed), text):
        assert VALUE not in blob and "raw\n" not in blob.replace("raw ", "")

    from tests.vault.test_vault_format import independent_decrypt
    assert independent_decrypt(home / "vault.db", "exchange key", PW) == VALUE.encode()
    assert independent_decrypt(home / "vault.db", "raw", PW) == b"raw\n"

    # rotate keeps scope and hosts
    cli_json("vault", "rotate", "exchange key", home=home, env=ENV, input="new-value")
    assert independent_decrypt(home / "vault.db", "exchange key", PW) == b"new-value"
    assert cli_json("vault", "list", home=home)["secrets"][0]["hosts"] == ["api.example.com"]

    st = cli_json("vault", "status", home=home)
    assert st == {"initialized": True, "sealed": True, "running": False, "path": str(home / "vault.db"), "secrets": 2}
    assert cli_json("vault", "remove", "raw", home=home)["removed"] is True
    gone = run_cli("vault", "delete", "raw", "--json", home=home, check=False)
    assert gone.returncode == 2 and json.loads(gone.stdout)["error"]["type"] == "SecretNotFound"

    d = doctor(Home.at(home))["vault"]
    assert d["status"] == "ok" and d["secrets"] == 1 and d["kdf"]["m_kib"] == 65536
    exported = cli_quick("audit", "export", "--format", "jsonl", home=home).stdout
    kinds = [json.loads(line).get("kind") for line in exported.splitlines() if line.strip()]
    for k in ("vault.initialized", "vault.secret_set", "vault.secret_rotated", "vault.secret_removed"):
        assert k in kinds, (k, kinds)
    assert VALUE not in exported and "new-value" not in exported


def test_bad_input_changes_nothing(home: Path) -> None:
    vinit(home)
    before = (home / "vault.db").read_bytes()
    cases = [
        (["vault", "set", "x", "--all-agents", "--disclose-to-agent", "--scope", "process.run"],
         {"STOCKADE_VAULT_PASSPHRASE": "wrong"}, "x", 2),
        (["vault", "set", "x", "--all-agents", "--scope", "network.http_request"], ENV, "x", 2),     # no --host
        (["vault", "set", "x", "--scope", "not a capability"], ENV, "x", 2),
        (["vault", "set", "x}", "--all-agents", "--disclose-to-agent", "--scope", "process.run"], ENV, "x", 2),
        (["vault", "set", "x", "--all-agents", "--disclose-to-agent", "--scope", "process.run"], ENV, "", 2),
                         # empty value
        (["vault", "set", "x", "--all-agents", "--disclose-to-agent", "--scope", "process.run"],
         {"STOCKADE_VAULT_PASSPHRASE": ""}, "x", 2),
        (["vault", "unseal"], ENV, None, 3),                                       # no server
        (["vault", "seal"], ENV, None, 3),
    ]
    for args, env, stdin, code in cases:
        e = {k: v for k, v in os.environ.items() if k != "STOCKADE_VAULT_PASSPHRASE"}
        e.update(env)
        p = run_cli(*args, "--json", home=home, env=e, input=stdin, check=False)
        assert p.returncode == code, (args, p.stdout, p.stderr)
        assert "error" in json.loads(p.stdout), args
    assert quick_json("vault", "list", home=home)["secrets"] == []
    c = sqlite3.connect(home / "vault.db")
    assert c.execute("SELECT count(*) FROM secrets").fetchone()[0] == 0
    assert len(before) > 0


def test_offline_rekey(home: Path, tmp_path: Path) -> None:
    vinit(home)
    quick_json("vault", "set", "a", "--all-agents", "--disclose-to-agent", "--scope", "process.run", home=home,
               env=ENV, input="value-a")
    newf = tmp_path / "new"
    newf.write_text("the new passphrase\n")
    out = cli_json("vault", "rekey", "--new-passphrase-file", str(newf), home=home, env=ENV)
    assert out["secrets"] == 1
    from tests.vault.test_vault_format import independent_decrypt
    assert independent_decrypt(home / "vault.db", "a", "the new passphrase") == b"value-a"
    p = run_cli("vault", "set", "b", "--all-agents", "--disclose-to-agent", "--scope", "process.run", "--json",
                home=home, env=ENV, input="v", check=False)
    assert p.returncode == 2 and json.loads(p.stdout)["error"]["type"] == "WrongPassphrase"


def allow_secrets_list(home: Path) -> None:
    """The personal template's default is approval_required; let agents list names at once."""
    import yaml

    org = home / "policies" / "org.yaml"
    doc = yaml.safe_load(org.read_text())
    doc.setdefault("rules", []).append({"id": "secrets-list", "capability": "secrets.list", "tier": "autonomous"})
    org.write_text(yaml.safe_dump(doc))
    cfg = home / "stockade.yaml"
    conf = yaml.safe_load(cfg.read_text())
    conf.setdefault("approvals", {})["hold_seconds"] = 0     # ApprovalPending at once
    cfg.write_text(yaml.safe_dump(conf))


def test_running_gateway_seal_unseal(home: Path, tmp_path: Path) -> None:
    vinit(home)
    allow_secrets_list(home)
    quick_json("vault", "set", "envtok", "--all-agents", "--disclose-to-agent", "--scope", "process.run", home=home,
               env=ENV, input=VALUE)
    srv = start_server(home)
    try:
        st = cli_json("vault", "status", home=home)
        assert st["running"] and st["sealed"] and st["secrets"] == 1
        assert st["process"] == {"core_dumps_off": True, "non_dumpable": True}
        key = srv.agent("alice")
        health = srv.invoke(key, "system.health")["result"]
        assert health["layers"]["vault"]["sealed"] is True

        bad = run_cli("vault", "unseal", "--json", home=home, env={"STOCKADE_VAULT_PASSPHRASE": "nope"}, check=False)
        assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["type"] == "WrongPassphrase"
        pf = tmp_path / "pw"
        pf.write_text(PW + "\n")
        env_wo = {k: v for k, v in os.environ.items() if k != "STOCKADE_VAULT_PASSPHRASE"}
        up = json.loads(run_cli("vault", "unseal", "--passphrase-file", str(pf), "--json", home=home,
                                env=env_wo).stdout)
        assert up["sealed"] is False and up["memory"]["mlock"] and up["memory"]["dontfork"]
        assert srv.invoke(key, "system.health")["result"]["layers"]["vault"]["sealed"] is False

        # while running: set goes through the gateway (no passphrase needed once unsealed)
        cli_json("vault", "set", "other", "--all-agents", "--disclose-to-agent", "--scope", "process.run",
                 home=home, env=env_wo, input="other-value")
        lst = srv.invoke(key, "secrets.list")
        names = [s["name"] for s in lst["result"]["secrets"]]
        assert names == ["envtok", "other"] and VALUE not in json.dumps(lst)
        # in-process built-ins skip output validation at run time: the declared contract must hold
        out_schema = yaml.safe_load((Path(vault_pkg.__file__).parent / "capabilities.yaml").read_text())
        (spec,) = [c for c in out_schema["capabilities"] if c["name"] == "secrets.list"]
        jsonschema.validate(lst["result"], spec["output"])
        assert all(s["disclosed"] is True for s in lst["result"]["secrets"])

        # an agent can ask for a secret: it becomes an approval item for the owner
        req = srv.invoke(key, "secrets.request", {"name": "github token", "reason": "push the release"})
        assert req["error"]["data"]["type"] == "ApprovalPending", req

        # rekey through the running gateway: it stays unsealed with the new key
        newf = tmp_path / "newpw"
        newf.write_text("second passphrase\n")
        rk = cli_json("vault", "rekey", "--passphrase-file", str(pf), "--new-passphrase-file", str(newf),
                      home=home, env=env_wo)
        assert rk == {"rekeyed": True, "secrets": 2, "sealed": False}
        cli_json("vault", "rotate", "other", home=home, env=env_wo, input="other-value-2")
        from tests.vault.test_vault_format import independent_decrypt
        assert independent_decrypt(home / "vault.db", "other", "second passphrase") == b"other-value-2"

        sealed = cli_json("vault", "seal", home=home)
        assert sealed["was_unsealed"] is True
        p = run_cli("vault", "set", "x", "--all-agents", "--disclose-to-agent", "--scope", "process.run", "--json",
                    home=home, input="v", check=False)
        assert p.returncode == 3 and json.loads(p.stdout)["error"]["type"] == "VaultSealed"
        old = run_cli("vault", "unseal", "--passphrase-file", str(pf), "--json", home=home, env=env_wo, check=False)
        assert old.returncode == 2 and json.loads(old.stdout)["error"]["type"] == "WrongPassphrase"
        cli_json("vault", "unseal", "--passphrase-file", str(newf), home=home, env=env_wo)
    finally:
        srv.stop()
    log = "".join(f.read_text(errors="replace") for f in home.parent.glob("serve-*.log"))
    assert VALUE not in log and PW not in log
    exported = cli_quick("audit", "export", "--format", "jsonl", home=home).stdout
    kinds = [json.loads(line).get("kind") for line in exported.splitlines() if line.strip()]
    for k in ("vault.unseal_failed", "vault.unsealed", "vault.secret_set", "vault.sealed", "vault.rekeyed",
              "vault.secret_rotated"):
        assert k in kinds, (k, kinds)
    assert VALUE not in exported and PW not in exported and "other-value" not in exported
    assert "second passphrase" not in exported and "second passphrase" not in log


def test_doctor_flags_mode_and_damage(home: Path) -> None:
    h = Home.at(home)
    assert doctor(h)["vault"]["initialized"] is False
    vinit(home)
    os.chmod(home / "vault.db", 0o644)
    d = doctor(h)["vault"]
    assert d["status"] == "critical" and "0600" in d["detail"]
    os.chmod(home / "vault.db", 0o600)
    c = sqlite3.connect(home / "vault.db")
    c.execute("UPDATE vault_meta SET value='00' WHERE key='checksum'")
    c.commit()
    c.close()
    d = doctor(h)["vault"]
    assert d["status"] == "critical" and "checksum" in d["detail"]
    full = cli_json("doctor", home=home, check=False)
    assert full["checks"]["vault"]["status"] == "critical"


def test_unknown_scope_or_agent_is_refused_with_the_nearest_name(home: Path) -> None:
    vinit(home)
    cli_quick("agent", "create", "trader", home=home)
    for extra, said in ((["--scope", "filesystem.raed", "--all-agents"], "did you mean 'filesystem.read'"),
                        (["--scope", "filesystem.read", "--agent", "trader2"], "did you mean 'trader'")):
        p = run_cli("vault", "set", "k", *extra, home=home, env=ENV, input="v", check=False)
        assert p.returncode == 2 and said in p.stderr, p.stderr
    assert cli_json("vault", "list", home=home, env=ENV)["secrets"] == []


def test_owner_errors_carry_no_agent_hints(home: Path) -> None:
    p = run_cli("agent", "rotate", "ghost", "--json", home=home, check=False)
    e = json.loads(p.stdout)["error"]
    assert p.returncode == 2 and "input schema" not in p.stdout and "unknown agent 'ghost'" in e["message"]
    p = run_cli("agent", "revoke", "ghost", home=home, check=False)
    assert p.returncode == 2 and "stockade agent list" in p.stderr
