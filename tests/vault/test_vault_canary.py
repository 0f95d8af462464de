"""Full-stack canary (issue 8 acceptance): a secret used 1,000 times through the real gateway.

`stockade serve` with the real sandbox, egress and audit; an echo server in its own network
namespace that reflects the header raw and encoded; process.run printing the env value raw,
base64 and hex. The value and its encodings must appear in no result, error, audit file, log file,
the environment of an unrelated call's sandbox child, nor the zygote's memory (which every later
child inherits).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from tests.conftest import Server, cli_quick, need_root, quick_json, start_server
from tests.egress.topo import TestHost

# One worker runs them all: they share the test host address 198.51.100.88 (one route on the host).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vault-canary")]

HERE = Path(__file__).resolve().parent
IP, PORT = "198.51.100.88", 8080          # TEST-NET-2, on a host we create (index 9: unused by egress tests)
PW = "canary test passphrase"
HTTP_SECRET = "HTTPCANARY-a8f3c2e1b7d94f60-zz"
ENV_SECRET = "ENVCANARY-5e1d7c3b9a2f4e68/+="
ODD_NAME, ODD_VALUE = 'odd name \u2713 "q"', "sp ace\\ 'q' $HOME \u00e9\U0001f511\t\x01 end\n"


def forms(value: str) -> list[bytes]:
    b = value.encode()
    out = [b, b.hex().encode(), b.hex().upper().encode(), base64.b64encode(b), base64.urlsafe_b64encode(b),
           base64.b64encode(b).rstrip(b"="), quote(value, safe="").encode()]
    out.append(base64.b64encode(b"user:" + b)[8:-4])        # embedded in a longer base64 stream
    return out


def leaks(blob: bytes) -> list[str]:
    found = []
    for v in (HTTP_SECRET, ENV_SECRET):
        for f in forms(v):
            if f in blob:
                found.append(f"{v[:12]}..: {f[:40]!r}")
    return found


class Lab:
    """The module's test host, home (vault with three secrets, agent alice) and at most one gateway
    on that home at a time. Built once: every test here only reads or calls; none needs a home
    of its own (the canary test seals the vault itself before it checks the sealed refusal)."""

    def __init__(self, tmp: Path, host: TestHost) -> None:
        self.tmp, self.host = tmp, host
        self.home = _home(tmp)
        self.key = quick_json("agent", "create", "alice", home=self.home)["key"]
        self._shared: Server | None = None

    def shared(self) -> Server:
        """A running gateway, unsealed, kept for the next test that only reads."""
        if self._shared is None:
            self._shared = start_server(self.home)
            _unseal(self.home)
        return self._shared

    def own(self) -> Server:
        """A gateway of the caller's own, to stop and inspect after (the shared one stops first)."""
        self.stop_shared()
        return start_server(self.home)

    def stop_shared(self) -> None:
        if self._shared is not None:
            self._shared.stop()
            self._shared = None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need_root()
    tmp = tmp_path_factory.mktemp("canary")
    host = TestHost(9, IP, tmp)
    host.up()
    try:
        log = tmp / "echo.log"
        log.write_text("")
        p = subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable, str(HERE / "echo_srv.py"), str(PORT),
                              str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        host.procs.append(p)
        deadline = time.monotonic() + 20
        while "ready" not in log.read_text():
            assert p.poll() is None and time.monotonic() < deadline, "echo server did not start"
            time.sleep(0.05)
        lab = Lab(tmp, host)
        try:
            yield lab
        finally:
            lab.stop_shared()
    finally:
        host.down()


def _home(tmp_path: Path) -> Path:
    # setup through the CLI in this process (quick_json): the CLI is not under test here
    h = tmp_path / "home"
    cli_quick("init", home=h)
    with open(h / "stockade.yaml", "a") as f:
        f.write("egress:\n  resolver: null\n  poll: 0.3s\n")
    # no approvals and no rate limits in this test (1,000 calls in well under a minute)
    (h / "policies" / "org.yaml").write_text("version: 1\ndefault: autonomous\nrules: []\n")
    (h / "policies" / "agents" / "alice.yaml").write_text(
        "version: 1\nrules:\n  - {capability: 'network.*', tier: autonomous}\n"
        "  - {capability: 'process.*', tier: autonomous}\n"
        f"sandbox:\n  egress:\n    - '{IP}:{PORT}'\n")
    env = {"STOCKADE_VAULT_PASSPHRASE": PW}
    quick_json("vault", "init", home=h, env=env)
    quick_json("vault", "set", "httpkey", "--all-agents", "--scope", "network.http_request", "--host",
               f"http://{IP}:{PORT}",
               home=h, env=env, input=HTTP_SECRET)
    quick_json("vault", "set", "envtok", "--all-agents", "--disclose-to-agent", "--scope", "process.run", home=h,
               env=env, input=ENV_SECRET)
    quick_json("vault", "set", ODD_NAME, "--all-agents", "--disclose-to-agent", "--scope", "process.run", "--raw",
               home=h, env=env, input=ODD_VALUE)
    return h


def _unseal(home: Path) -> None:
    cli_quick("vault", "unseal", home=home, env={"STOCKADE_VAULT_PASSPHRASE": PW})


def _result(r: dict[str, Any]) -> Any:
    return r.get("result", r.get("error"))


def test_canary_through_real_gateway(lab: Lab) -> None:
    # Its own gateway: stopped before the audit and log files are read (everything flushed).
    home, key, tmp_path = lab.home, lab.key, lab.tmp
    srv = lab.own()
    transcripts: list[bytes] = []
    try:
        probe = srv.invoke(key, "process.run", {"argv": ["true"]})
        if probe.get("error", {}).get("data", {}).get("type") == "SandboxUnavailable":
            pytest.fail(f"sandbox unavailable: {probe}")
        hdr = {"X-Canary": "${secret:httpkey}", "X-Other": "token ${secret:httpkey} inline"}
        sealed = srv.invoke(key, "network.http_request", {"url": f"http://{IP}:{PORT}/echo", "headers": hdr})
        assert sealed["error"]["data"]["type"] == "VaultSealed", sealed
        _unseal(home)

        # wait for the agent's egress rules, then 1,000 uses through network.http_request
        deadline = time.monotonic() + 30
        while True:
            r = srv.invoke(key, "network.http_request", {"url": f"http://{IP}:{PORT}/echo", "headers": hdr})
            if "result" in r or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert "result" in r, r

        def http_call(i: int) -> bytes:
            path = "/fail" if i % 10 == 0 else "/echo"
            res = srv.invoke(key, "network.http_request", {"url": f"http://{IP}:{PORT}{path}?i={i}", "headers": hdr,
                                                           "method": "POST", "body": f"n={i}"}, timeout=120)
            body = json.dumps(_result(res))
            assert "${secret:httpkey}" in body, res   # the server did echo it; the pipeline shows the reference
            return body.encode()

        with ThreadPoolExecutor(4) as pool:
            transcripts.extend(pool.map(http_call, range(1000)))

        # process.run prints it raw, base64 and hex (also on stderr and with a failing exit)
        script = ('printf "%s\\n" "$TOK"; printf %s "$TOK" | base64; printf %s "$TOK" | od -An -tx1 | tr -d " \\n";'
                  ' echo; printf "%s" "$TOK" >&2; exit 3')
        for _ in range(20):
            res = srv.invoke(key, "process.run", {"argv": ["sh", "-c", script], "env": {"TOK": "${secret:envtok}"}})
            out = _result(res)
            assert out.get("exit_code") == 3 and "${secret:envtok}" in out["stdout"], res
            transcripts.append(json.dumps(res).encode())
        # odd bytes reach the program exactly (checked by digest: the value itself is scrubbed)
        res = srv.invoke(key, "process.run", {"argv": ["sh", "-c", 'printf %s "$ODD" | sha256sum'],
                                              "env": {"ODD": "${secret:" + ODD_NAME + "}"}})
        assert _result(res)["stdout"].split()[0] == hashlib.sha256(ODD_VALUE.encode()).hexdigest(), res
        # a secret out of its scope: refused, audited, not leaked
        res = srv.invoke(key, "process.run", {"argv": ["env"], "env": {"T": "${secret:httpkey}"}})
        assert res["error"]["data"]["type"] == "SecretNotInScope", res
        transcripts.append(json.dumps(res).encode())

        # unrelated calls: the children's environment and memory hold nothing of it
        for argv in (["env"], ["cat", "/proc/self/environ"], ["sh", "-c", "cat /proc/1/environ; env"]):
            res = srv.invoke(key, "process.run", {"argv": argv})
            assert "result" in res, res
            transcripts.append(json.dumps(res).encode())
        gateway_env = Path(f"/proc/{srv.proc.pid}/environ").read_bytes()
    finally:
        srv.stop()

    for i, t in enumerate(transcripts):
        assert not leaks(t), f"transcript {i}: {leaks(t)}"
    audit = b"".join(p.read_bytes() for p in (home / "audit").rglob("*") if p.is_file())
    assert audit and not leaks(audit), leaks(audit)
    logs = b"".join(p.read_bytes() for p in list(tmp_path.rglob("*.log")) if p.is_file())
    assert not leaks(logs), leaks(logs)
    assert not leaks(gateway_env)
    # the vault records use without recording values
    listed = quick_json("vault", "list", home=home)
    used = {s["name"]: s["last_used"] for s in listed["secrets"]}
    assert used["httpkey"] and used["envtok"]


def _process_memory(pid: int) -> bytes:
    """Every readable private mapping of a process (root reads /proc/PID/mem)."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            if not m or not m.group(3).startswith("r") or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            if end - start > 512 * 1024 * 1024:
                continue
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except OSError:
                continue
    return b"".join(chunks)


def test_zygote_memory_never_holds_secret_values(lab: Lab) -> None:
    srv, key = lab.shared(), lab.key
    for _ in range(5):
        res = srv.invoke(key, "process.run", {"argv": ["true"], "env": {"TOK": "${secret:envtok}"}})
        assert "result" in res, res
    zygote = srv.invoke(key, "system.health")["result"]["layers"]["sandbox"]["zygote_pid"]
    found = leaks(_process_memory(zygote))
    assert not found, f"the zygote's memory (inherited by every later sandbox child) holds: {found}"


def test_unseal_happens_after_zygote_fork(lab: Lab) -> None:
    """The zygote is older than the unseal and its memory never holds the master key."""
    srv, key, home = lab.shared(), lab.key, lab.home
    health = srv.invoke(key, "system.health")["result"]
    assert health["layers"]["vault"]["sealed"] is False, health["layers"]["vault"]
    zygote = health["layers"]["sandbox"]["zygote_pid"]
    # derive the key independently and look for it in the zygote's memory
    from argon2.low_level import Type, hash_secret_raw

    from stockade.vault.store import VaultFile
    kdf = VaultFile(home / "vault.db").kdf()
    master = hash_secret_raw(PW.encode(), kdf.salt, kdf.t, kdf.m_kib, kdf.p, 32, Type.ID)
    assert master not in _process_memory(zygote)
    assert health["layers"]["vault"]["non_dumpable"] is True
    status = Path(f"/proc/{srv.proc.pid}/status").read_text()
    limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
    assert re.search(r"Max core file size\s+0\s+0", limits), limits
    assert "Name:" in status
