"""The shipped systemd units: they verify, and their ExecStart, run with the unit's environment and
a NOTIFY_SOCKET listener (systemd is not PID 1 on these machines), says READY=1 only once both
listeners accept, reloads policy and config on SIGHUP, and stops cleanly on SIGTERM (STOPPING=1,
exit 0, the audit log closed and verifying)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import STOCKADE, cli_json, need, run_cli
from tests.service.unitfile import environment, exec_start, service_section

from stockade.core import sdnotify

SLOW = 240


def _install(tmp_path: Path) -> tuple[Path, Path]:
    units, home = tmp_path / "units", tmp_path / "home"
    units.mkdir()
    run_cli("service", "install", "--unit-dir", str(units), "--home", str(home), "--no-enable")
    return units, home


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian package systemd)")
    units, _ = _install(tmp_path)
    for name in ("stockade.service", "stockade-perimeter.service"):
        p = subprocess.run(["systemd-analyze", "verify", str(units / name)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0 and p.stderr.strip() == "", (name, p.stdout, p.stderr)
    # The check can fail: a directive systemd does not know is reported.
    bad = units / "stockade.service"
    bad.write_text(bad.read_text().replace("[Service]\n", "[Service]\nProtectEverythingPlease=yes\n"))
    p = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=120)
    assert "ProtectEverythingPlease" in p.stderr


def test_gateway_unit_is_type_notify_with_its_hardening(tmp_path: Path) -> None:
    units, home = _install(tmp_path)
    svc = service_section(units / "stockade.service")
    assert svc["Type"] == ["notify"] and svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("ProtectKernelModules", "yes"), ("RestrictSUIDSGID", "yes"), ("UMask", "0077")):
        assert svc[key] == [value], key
    assert str(home) in svc["ReadWritePaths"][0]
    argv = exec_start(units / "stockade.service")
    assert argv[:3] == [*STOCKADE[:1], "-m", "stockade"] and "serve" in argv
    assert environment(units / "stockade.service")["STOCKADE_HOME"] == str(home)


class Notifications:
    """The systemd side of sd_notify: a datagram unix socket collecting what the service sends."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.seen: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str, proc: subprocess.Popen[str], timeout: float = SLOW) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.5)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                assert proc.poll() is None or key == "STOPPING", f"service exited {proc.returncode}"
                continue
            msg = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.seen.append(msg)
            if msg.get(key) == value:
                return msg
        raise AssertionError(f"no {key}={value} from the service; saw {self.seen}")


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _kinds(home: Path) -> list[str]:
    out = run_cli("audit", "query", "--limit", "1000", "--json", home=home).stdout
    data = json.loads(out)
    records = data["records"] if isinstance(data, dict) else data
    return [r.get("kind", "call") for r in records]


@pytest.mark.slow
def test_exec_start_notifies_ready_reloads_on_hup_and_stops_on_term(tmp_path: Path) -> None:
    units, home = _install(tmp_path)
    cfg = home / "stockade.yaml"
    cfg.write_text(cfg.read_text().replace("port: 7700", "port: 0").replace("port: 7800", "port: 0"))
    unit = units / "stockade.service"
    notify = Notifications(tmp_path / "notify.sock")
    env = {**os.environ, **environment(unit), "NOTIFY_SOCKET": str(notify.path)}
    log = open(tmp_path / "journal.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(exec_start(unit), env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        ready = notify.wait_for("READY", "1", proc)
        ports = json.loads((home / "run" / "ports.json").read_text())
        assert set(ports) == {"gateway", "dashboard"}
        assert all(_accepts(p) for p in ports.values())      # READY=1 came after both listeners accept
        assert "gateway" in ready["STATUS"] and "dashboard" in ready["STATUS"]

        # SIGHUP: a live config change applies, a structural one is named as needing a restart,
        # and the policy is recompiled now.
        cfg.write_text(cfg.read_text() + "\nsecurity:\n  contact: mailto:owner@example.org\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1", proc)
        notify.wait_for("READY", "1", proc)
        kinds = _kinds(home)
        assert "config.reloaded" in kinds and "policy.reloaded" in kinds, kinds
        # A config that does not load changes nothing and the gateway keeps serving.
        cfg.write_text(cfg.read_text() + "\nnot_a_section: 1\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY", "1", proc)
        assert "config.rejected" in _kinds(home)
        assert proc.poll() is None and _accepts(ports["gateway"])

        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1", proc)
        assert proc.wait(SLOW) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    journal = (tmp_path / "journal.log").read_text()
    assert "stopped cleanly" in journal, journal
    assert not (home / "run" / "ports.json").exists()
    assert cli_json("audit", "verify", home=home)["ok"] is True


def test_sdnotify_message_and_address() -> None:
    assert sdnotify.message(READY=1, STATUS="a\nb") == b"READY=1\nSTATUS=a"
    assert sdnotify.address("@sd") == "\0sd" and sdnotify.address("/run/x") == "/run/x"
    assert sdnotify.address("relative") is None and sdnotify.address(None) is None


def test_sdnotify_without_socket_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    assert sdnotify.stopping() is False        # a vanished supervisor socket never raises
