"""keygen's edit of stockade.yaml, config validation with file:line, the fwknoprc it prints
(checked with the real fwknop client), knock's input errors, and the sshd doctor checks."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import cli_json, need, run_cli

from stockade.core.errors import ConfigError
from stockade.perimeter import config as pconfig
from stockade.perimeter import fwknop, sshd


def serve_isolated(home: Path) -> subprocess.CompletedProcess[str]:
    """`perimeter serve` that must refuse to start; run in a fresh network namespace when root so
    that a bug could never load a drop-everything table into the host's namespace."""
    cmd = [sys.executable, "-m", "stockade", "perimeter", "serve", "--home", str(home)]
    if os.geteuid() == 0:
        cmd = ["unshare", "--net", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_keygen_adds_a_stanza_safely(home: Path) -> None:
    cfg_path = home / "stockade.yaml"
    before = cfg_path.read_text()
    out = cli_json("perimeter", "keygen", "--open", "tcp/22", "--open", "udp/51820", home=home)
    assert set(out) >= {"name", "key_base64", "hmac_key_base64", "native_key", "fwknoprc"}
    assert out["name"] == "owner"
    assert len(base64.b64decode(out["key_base64"])) == 32 and len(base64.b64decode(out["hmac_key_base64"])) == 64
    assert len(base64.b64decode(out["native_key"])) == 32
    text = cfg_path.read_text()
    assert oct(os.stat(cfg_path).st_mode & 0o777) == "0o600"
    assert text.startswith(before.split("\n", 1)[0])          # the owner's comments survive
    assert "# buffer (ring buffer on disk full)" in text
    cfg = pconfig.load(cfg_path)
    assert [s.name for s in cfg.stanzas] == ["owner"] and cfg.stanzas[0].open_ports == ["tcp/22", "udp/51820"]
    assert cli_json("perimeter", "keygen", home=home)["name"] == "owner-2"
    assert [s.name for s in pconfig.load(cfg_path).stanzas] == ["owner", "owner-2"]
    run_cli("doctor", home=home, check=False)                  # the whole file still loads

    snapshot = cfg_path.read_bytes()
    for args in (["--name", "owner"], ["--name", "bad name"], ["--open", "tcp/0"], ["--open", "icmp/1"]):
        p = run_cli("perimeter", "keygen", *args, "--json", home=home, check=False)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert "error" in json.loads(p.stdout)
        assert cfg_path.read_bytes() == snapshot              # bad input changes nothing


def test_invalid_perimeter_section_reports_file_line(home: Path) -> None:
    cfg_path = home / "stockade.yaml"
    cfg_path.write_text(cfg_path.read_text() + "perimeter:\n  stanzas:\n  - name: x\n    native_key: AAAA\n"
                        "    bogus: 1\n")
    with pytest.raises(ConfigError) as e:
        pconfig.load(cfg_path)
    msgs = "\n".join(e.value.errors)
    assert f"{cfg_path}:" in msgs and "perimeter.stanzas.0.bogus: unknown key" in msgs
    assert "native_key" in msgs
    snapshot = cfg_path.read_bytes()
    p = run_cli("perimeter", "keygen", home=home, check=False)
    assert p.returncode == 2 and "unknown key" in p.stderr
    assert cfg_path.read_bytes() == snapshot
    p = serve_isolated(home)
    assert p.returncode == 2


def test_stanza_validation_rules() -> None:
    k = base64.b64encode(os.urandom(32)).decode()
    for bad in ({"name": "a"}, {"name": "a", "key_base64": k}, {"name": "a", "native_key": "!!"},
                {"name": "a", "native_key": base64.b64encode(b"short").decode()},
                {"name": "a", "native_key": k, "open_ports": []}, {"name": "a", "native_key": k, "open_ports": ["22"]}):
        with pytest.raises(ConfigError):
            pconfig.validate({"stanzas": [bad]})
    with pytest.raises(ConfigError):
        pconfig.validate({"stanzas": [{"name": "a", "native_key": k}, {"name": "a", "native_key": k}]})
    assert pconfig.validate({"stanzas": [{"name": "a", "native_key": k, "open_ports": ["TCP/22"]}]}) \
        .stanzas[0].open_ports == ["tcp/22"]


def test_serve_refuses_without_stanzas(home: Path) -> None:
    p = serve_isolated(home)
    assert p.returncode == 2 and "keygen" in p.stderr


def test_printed_fwknoprc_works_with_the_real_client(home: Path, tmp_path: Path) -> None:
    need(shutil.which("fwknop") is not None, "Debian fwknop-client is not installed")
    out = cli_json("perimeter", "keygen", "--name", "laptop", home=home)
    rc = tmp_path / "fwknoprc"
    rc.write_text(out["fwknoprc"].replace("SERVER_ADDRESS", "127.0.0.1").replace("resolve", "192.0.2.44"))
    rc.chmod(0o600)
    pkt = tmp_path / "pkt"
    p = subprocess.run(["fwknop", "--rc-file", str(rc), "-n", "laptop", "--no-save-args", "-T", "-B", str(pkt)],
                       capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)}, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    st = pconfig.load(home / "stockade.yaml").stanzas[0]
    keys = st.fwknop_keys()
    assert keys is not None
    req = fwknop.decode(pkt.read_bytes().strip(), *keys)
    assert str(req.allow_ip) == "192.0.2.44" and [str(x) for x in req.ports] == ["tcp/22"]


def test_knock_input_errors(tmp_path: Path) -> None:
    k = base64.b64encode(os.urandom(32)).decode()
    for args in (["127.0.0.1", "--key", k, "--open", "tcp/99999"], ["127.0.0.1"], ["127.0.0.1", "--key", "%%"],
                 ["127.0.0.1", "--key", base64.b64encode(b"x").decode()],
                 ["127.0.0.1", "--fwknop", "--key-base64", k]):
        p = run_cli("knock", *args, check=False, env={"STOCKADE_KNOCK_KEY": ""})
        assert p.returncode == 2, (args, p.stdout, p.stderr)


def test_knock_sends_one_datagram_and_prints_json(tmp_path: Path) -> None:
    import socket

    from stockade.perimeter import native

    secret = os.urandom(32)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(10)
        port = s.getsockname()[1]
        out = cli_json("knock", "127.0.0.1", "--spa-port", str(port), "--port", "22", "--port", "2222",
                       env={**os.environ, "STOCKADE_KNOCK_KEY": base64.b64encode(secret).decode()})
        wire, _ = s.recvfrom(2048)
    assert out["profile"] == "native" and out["allow_ip"] == "127.0.0.1" and out["ports"] == ["tcp/22", "tcp/2222"]
    req = native.decode(wire, native.NativeKey.from_secret(secret))
    assert str(req.allow_ip) == "127.0.0.1" and [str(p) for p in req.ports] == ["tcp/22", "tcp/2222"]


# -- sshd doctor --------------------------------------------------------------------------------

def test_sshd_config_findings() -> None:
    conf = sshd.parse_sshd_T("passwordauthentication yes\npermitrootlogin yes\nhostkey /a\nhostkey /b\n"
                             "kbdinteractiveauthentication no\n")
    assert conf["hostkey"] == ["/a", "/b"]
    found = sshd.config_findings(conf)
    assert any("PasswordAuthentication" in f for f in found) and any("PermitRootLogin" in f for f in found)
    good = sshd.parse_sshd_T("passwordauthentication no\npermitrootlogin prohibit-password\n")
    assert sshd.config_findings(good) == []


def test_key_strength_with_real_keys(tmp_path: Path) -> None:
    need(shutil.which("ssh-keygen") is not None, "ssh-keygen is not installed")
    for typ, bits, ok in (("ed25519", None, True), ("rsa", "2048", False), ("rsa", "3072", True)):
        f = tmp_path / f"k_{typ}_{bits}"
        subprocess.run(["ssh-keygen", "-q", "-t", typ, *(["-b", bits] if bits else []), "-N", "", "-f", str(f)],
                       check=True, capture_output=True)
        line = Path(str(f) + ".pub").read_text()
        assert sshd.key_strength(line)[0] is ok, (typ, bits, sshd.key_strength(line))
        assert sshd.key_strength('from="10.0.0.1",no-pty ' + line)[0] is ok
    ak = tmp_path / "authorized_keys"
    ak.write_text("# comment\n" + Path(str(tmp_path / "k_rsa_2048") + ".pub").read_text())
    assert len(sshd.key_findings([ak])) == 1
    assert sshd.key_strength("ssh-dss AAAA")[0] is False


def test_doctor_reports_perimeter_and_sshd(home: Path) -> None:
    out = json.loads(run_cli("doctor", "--json", home=home, check=False).stdout)
    assert out["checks"]["perimeter"]["status"] == "degraded"          # no stanzas yet
    assert "sshd" in out["checks"]
    cli_json("perimeter", "keygen", home=home)
    out = json.loads(run_cli("doctor", "--json", home=home, check=False).stdout)
    assert "not running" in out["checks"]["perimeter"]["detail"]
