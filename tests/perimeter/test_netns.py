"""Acceptance: a real sshd behind the perimeter, real fwknop client and `stockade knock`, in
network namespaces we create (server + two clients; traffic never leaves them)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import pytest
from tests.perimeter.conftest import A_IP, B_IP, SERVER_IP, Lab, fwknop_cmd, fwknop_packet

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("perimeter-netns")]


def fwknop_send(lab: Lab, ns: str, *args: str, save: str | None = None) -> bytes | None:
    cmd = ["ip", "netns", "exec", ns, *fwknop_cmd(lab.keys, "-D", SERVER_IP, *args)]
    if save:
        cmd += ["-B", save]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HOME": str(lab.tmp)}, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    return open(save, "rb").read().strip() if save else None


_KEY_ENV = {"--key": "STOCKADE_KNOCK_KEY", "--key-base64": "STOCKADE_KNOCK_KEY_BASE64",
            "--hmac-key-base64": "STOCKADE_KNOCK_HMAC_KEY_BASE64"}


def knock(lab: Lab, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`stockade knock`, keys passed in the environment (never on the command line)."""
    argv, env = list(args), dict(os.environ)
    for flag, var in _KEY_ENV.items():
        while flag in argv:
            i = argv.index(flag)
            env[var] = argv[i + 1]
            del argv[i:i + 2]
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "stockade", "knock", SERVER_IP, *argv],
                       capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def send_raw(agent, wire: bytes) -> None:  # type: ignore[no-untyped-def]
    assert agent(op="udp", host=SERVER_IP, port=62201, data=base64.b64encode(wire).decode())["result"] == "sent"


def ssh_session(lab: Lab, ns: str) -> subprocess.Popen[str]:
    """A real OpenSSH login from a client namespace that waits for a line on stdin."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, "ssh", "-F", "/dev/null", "-i", str(lab.ssh_key),
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR",
                          f"root@{SERVER_IP}", "echo ready; read x; echo got-$x"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout
    line = p.stdout.readline().strip()
    assert line == "ready", (line, p.stderr.read() if p.poll() is not None and p.stderr else "")
    return p


def closed_for_both(lab: Lab) -> None:
    assert lab.a.ssh_port() == "timeout"
    assert lab.b.ssh_port() == "timeout"


def test_without_daemon_sshd_is_reachable(lab: Lab) -> None:
    """Control: the lab works, so 'timeout' later is the perimeter and nothing else."""
    assert lab.a.ssh_port(2.0) == "open"
    assert lab.b.ssh_port(2.0) == "open"


def test_fwknop_client_opens_for_sender_only_then_expires(lab: Lab) -> None:
    d = lab.start_daemon()
    try:
        # Dark: no SYN-ACK, no RST, and the SPA port answers nothing either.
        closed_for_both(lab)
        assert lab.a(op="udp_probe", host=SERVER_IP, port=62201, timeout=0.5)["result"] == "silent"
        assert lab.a(op="udp_probe", host=SERVER_IP, port=9, timeout=0.5)["result"] == "silent"

        # Debian's fwknop client, real packet over UDP.
        n = d.count()
        saved = str(lab.tmp / "fwknop-a.pkt")
        wire = fwknop_send(lab, lab.ns_a, "-A", "tcp/22", "-a", A_IP, save=saved)
        assert d.wait_outcome(n)["outcome"] == "granted"
        lab.wait_grant(A_IP)
        assert lab.grants() == [(A_IP, "tcp", 22)]
        banner = lab.a(op="connect", host=SERVER_IP, port=22, timeout=2.0)
        assert banner["result"] == "open" and banner["banner"].startswith("SSH-2.0-OpenSSH")
        assert lab.b.ssh_port() == "timeout"                  # the other client stays outside

        # An established session (real ssh login + a plain TCP connection) outlives the grant.
        session = ssh_session(lab, lab.ns_a)
        assert lab.a(op="hold", id="raw", host=SERVER_IP, port=22)["result"] == "open"
        lab.wait_no_grants(timeout=10)
        assert lab.a.ssh_port() == "timeout"                  # closed again for new connections
        assert session.stdin and session.stdout
        session.stdin.write("still-here\n")
        session.stdin.flush()
        assert session.stdout.readline().strip() == "got-still-here"
        session.wait(timeout=10)
        assert lab.a(op="poke", id="raw")["result"] == "alive"

        # A replayed packet opens nothing, from the sender or from the other client.
        assert wire is not None
        n = d.count()
        send_raw(lab.a, wire)
        assert d.wait_outcome(n)["outcome"] == "replay"
        send_raw(lab.b, wire)
        assert d.wait_outcome(n + 1)["outcome"] == "replay"

        # A fresh packet sent from B naming A's address: the source does not match.
        n = d.count()
        fwknop_send(lab, lab.ns_b, "-A", "tcp/22", "-a", A_IP)
        assert d.wait_outcome(n)["outcome"] == "address_mismatch"

        # A tampered packet (one character changed) fails the HMAC.
        good = fwknop_packet(lab.tmp, lab.keys, "-A", "tcp/22", "-a", A_IP)
        i = len(good) // 2
        bad = good[:i] + (b"A" if good[i:i + 1] != b"A" else b"B") + good[i + 1:]
        n = d.count()
        send_raw(lab.a, bad)
        assert d.wait_outcome(n)["outcome"] == "bad_hmac"

        # 0.0.0.0 ("use my source") is refused: the stanza did not opt in.
        n = d.count()
        fwknop_send(lab, lab.ns_a, "-A", "tcp/22", "-s")
        assert d.wait_outcome(n)["outcome"] == "zero_address"

        # A port the stanza does not allow.
        n = d.count()
        fwknop_send(lab, lab.ns_a, "-A", "tcp/2222", "-a", A_IP)
        assert d.wait_outcome(n)["outcome"] == "port_not_allowed"

        assert lab.grants() == []
        closed_for_both(lab)
    finally:
        if lab.daemon:
            assert lab.stop_daemon() == 0
    assert not lab.table_exists()                              # clean shutdown removes the table
    assert lab.a.ssh_port(2.0) == "open"


def test_stockade_knock_native_and_fwknop_profiles(lab: Lab) -> None:
    d = lab.start_daemon()
    try:
        closed_for_both(lab)
        n = d.count()
        saved = lab.tmp / "native-a.pkt"
        knock(lab, lab.ns_a, "--key", lab.keys["native_key"], "--save-packet", str(saved), "--json")
        ev = d.wait_outcome(n)
        assert ev["outcome"] == "granted" and ev["profile"] == "native" and ev["seconds"] == 3
        lab.wait_grant(A_IP)
        assert lab.grants() == [(A_IP, "tcp", 22)]
        st = subprocess.run(["ip", "netns", "exec", lab.srv, sys.executable, "-m", "stockade", "perimeter", "status",
                             "--home", str(lab.home), "--json"], capture_output=True, text=True, timeout=30)
        status = json.loads(st.stdout)
        assert status["table_loaded"] and [(g["ip"], g["proto"], g["port"]) for g in status["grants"]] == \
            [(A_IP, "tcp", 22)]
        assert lab.a.ssh_port(2.0) == "open"
        assert lab.b.ssh_port() == "timeout"
        held = lab.a(op="hold", id="k", host=SERVER_IP, port=22)
        assert held["result"] == "open"
        lab.wait_no_grants(timeout=10)
        assert lab.a.ssh_port() == "timeout"
        assert lab.a(op="poke", id="k")["result"] == "alive"

        wire = saved.read_bytes()
        n = d.count()
        send_raw(lab.a, wire)
        send_raw(lab.b, wire)
        assert d.wait_outcome(n)["outcome"] == "replay"
        assert d.wait_outcome(n + 1)["outcome"] == "replay"

        n = d.count()
        knock(lab, lab.ns_b, "--key", lab.keys["native_key"], "--allow-ip", A_IP)
        assert d.wait_outcome(n)["outcome"] == "address_mismatch"

        n = d.count()
        knock(lab, lab.ns_a, "--key", lab.keys["native_key"], "--save-packet", str(saved), "--allow-ip", "10.77.0.99")
        tampered = bytearray(saved.read_bytes())
        tampered[30] ^= 0x01
        d.wait_outcome(n)                                       # the 10.77.0.99 one: address_mismatch
        send_raw(lab.a, bytes(tampered))
        assert d.wait_outcome(n + 1)["outcome"] == "bad_tag"

        n = d.count()
        knock(lab, lab.ns_a, "--key", base64.b64encode(os.urandom(32)).decode())
        assert d.wait_outcome(n)["outcome"] == "unknown_key"
        assert lab.grants() == []
        closed_for_both(lab)

        # The fwknop-compatible profile from `stockade knock --fwknop`, with a client timeout
        # above the stanza's cap (5 s): granted, capped.
        n = d.count()
        knock(lab, lab.ns_a, "--fwknop", "--key-base64", lab.keys["key_base64"], "--hmac-key-base64",
              lab.keys["hmac_key_base64"], "--timeout", "60")
        ev = d.wait_outcome(n)
        assert ev["outcome"] == "granted" and ev["profile"] == "fwknop" and ev["seconds"] == 5
        lab.wait_grant(A_IP)
        assert lab.a.ssh_port(2.0) == "open"
        assert lab.b.ssh_port() == "timeout"
    finally:
        if lab.daemon:
            assert lab.stop_daemon() == 0


def test_flood_does_not_lock_out_a_valid_packet(lab: Lab) -> None:
    lab.start_daemon()
    try:
        res = lab.b(op="flood", host=SERVER_IP, port=62201, count=20000, size=200)
        assert res["result"] == "sent"
        t = time.monotonic()
        knock(lab, lab.ns_a, "--key", lab.keys["native_key"])
        lab.wait_grant(A_IP, timeout=3.0)
        assert time.monotonic() - t < 3.0
        assert lab.b.ssh_port() == "timeout"
    finally:
        if lab.daemon:
            assert lab.stop_daemon() == 0


def test_crash_leaves_the_door_closed_and_replays_survive_restart(lab: Lab) -> None:
    d = lab.start_daemon()
    n = d.count()
    saved = lab.tmp / "crash.pkt"
    knock(lab, lab.ns_a, "--key", lab.keys["native_key"], "--save-packet", str(saved))
    assert d.wait_outcome(n)["outcome"] == "granted"
    lab.wait_grant(A_IP)
    assert lab.stop_daemon(9) == -9                            # SIGKILL: no cleanup code runs
    assert lab.table_exists()                                  # drop policy stays
    lab.wait_no_grants(timeout=10)                             # the kernel still expires grants
    closed_for_both(lab)
    # Daemon down: the SPA port does not answer with ICMP port-unreachable either.
    assert lab.a(op="udp_probe", host=SERVER_IP, port=62201, timeout=0.5)["result"] == "silent"

    d = lab.start_daemon()
    try:
        n = d.count()
        send_raw(lab.a, saved.read_bytes())                    # replay across a restart
        assert d.wait_outcome(n)["outcome"] == "replay"
        assert lab.grants() == []
    finally:
        assert lab.stop_daemon() == 0
    assert not lab.table_exists()


def test_sighup_loads_a_new_keygen_stanza(lab: Lab) -> None:
    d = lab.start_daemon()
    try:
        p = subprocess.run([sys.executable, "-m", "stockade", "perimeter", "keygen", "--name", f"phone{lab.tag}",
                            "--home", str(lab.home), "--json"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        new_key = json.loads(p.stdout)["native_key"]
        n = d.count()
        knock(lab, lab.ns_b, "--key", new_key)
        assert d.wait_outcome(n)["outcome"] == "unknown_key"       # not loaded yet
        d.proc.send_signal(1)                                        # SIGHUP
        end = time.monotonic() + 5
        while not any(e.get("event") == "reloaded" for e in list(d.events)):
            assert time.monotonic() < end, d.events[-3:]
            time.sleep(0.05)
        n = d.count()
        knock(lab, lab.ns_b, "--key", new_key)
        assert d.wait_outcome(n)["outcome"] == "granted"
        lab.wait_grant(B_IP)
        assert lab.b.ssh_port(2.0) == "open"
        assert lab.a.ssh_port() == "timeout"
    finally:
        if lab.daemon:
            assert lab.stop_daemon() == 0
