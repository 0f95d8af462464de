"""Every shell command shown in README.md and docs/*.md runs as written (issue 18 acceptance).

The commands are taken from the Markdown itself: the lines of fenced ```sh/```bash/```shell
blocks, and the `$ ` lines of ```console blocks (or of any block that has them), with `\\`
continuations joined and trailing comments dropped. Each one becomes a test case, and runs
against one demo home with one running gateway for the whole module, in the order the docs show
them (a reader follows a page from the top: `vault rotate exchange` comes after `vault set
exchange`).

What may differ from the page, and only this, is listed here:
- SUBST: the values a reader has and the page cannot know (an agent key, the ports of this
  gateway, the data home in place of /var/lib/stockade, a real approval or session id);
- GIVEN: files the page assumes the reader has (key.txt, a pack directory, a publisher key);
- REALIZE: synopsis lines (`[--json]`, `a | b`) and third-party programs, each written out as
  the concrete commands that are run instead;
- NOT_HERE: what cannot run on this machine, with the reason (systemd, a real server on the
  Internet, a client program that is not installed, taking over the host's firewall).
A command that appears in none of them runs exactly as written, and a new command in the docs
is tested without anyone adding it here. Plain `stockade ...` commands run in this process
(click's runner: the CLI's start-up is ~0.5 s a call); anything with a pipe, `&&`, `;` or `$(`
runs in bash with the same `stockade` on PATH.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tests.conftest import Server, cli_json, run_cli, start_server

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"sh", "bash", "shell", "console"}
PASS = "correct horse battery staple 42"
STANDIN = f"{sys.executable} {ROOT / 'bench' / '_stdio_mcp.py'}"     # any stdio MCP server will do

pytestmark = pytest.mark.xdist_group("doc_commands")     # one worker: one gateway, the docs' order


@dataclass(frozen=True)
class Cmd:
    file: str
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def _drop_comment(line: str) -> str:
    """`cmd  # why` -> `cmd` (a # outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _commands(body: str, prompt_only: bool) -> Iterator[tuple[int, str]]:
    lines = body.split("\n")
    i = 0
    while i < len(lines):
        start, raw = i, lines[i]
        i += 1
        if prompt_only:
            if not raw.startswith("$ "):
                continue
            raw = raw[2:]
        while raw.endswith("\\") and i < len(lines):
            raw = raw[:-1] + " " + lines[i].strip()
            i += 1
        cmd = " ".join(_drop_comment(raw).split())
        if cmd:
            yield start, cmd


def extract() -> list[Cmd]:
    out = []
    for f in DOC_FILES:
        text = f.read_text()
        for m in re.finditer(r"^([ \t]*)```([\w-]*)[^\n]*\n(.*?)^\1```", text, re.S | re.M):
            indent, lang, body = m.group(1), m.group(2), m.group(3)
            body = "\n".join(ln[len(indent):] if ln.startswith(indent) else ln for ln in body.split("\n"))
            prompts = bool(re.search(r"^\$ ", body, re.M))
            if lang not in SHELL_LANGS and not prompts:
                continue
            first = text[:m.start(3)].count("\n") + 1
            for n, cmd in _commands(body, prompts or lang == "console"):
                out.append(Cmd(str(f.relative_to(ROOT)), first + n, cmd))
    return out + _table_commands()


def _table_commands() -> list[Cmd]:
    """The README's Command line table examples that need a gateway (the others run offline in
    tests/docs/test_readme.py)."""
    from tests.docs.test_readme import NOT_OFFLINE, README, table_examples

    lines = README.split("\n")
    out = []
    for ex in table_examples():
        if ex.startswith(NOT_OFFLINE):
            line = next(i for i, row in enumerate(lines, 1) if row.startswith("| `") and f"`{ex}`" in row)
            out.append(Cmd("README.md", line, " ".join(ex.split())))
    return out


# What cannot run here, by the start of the command, and why.
NOT_HERE = {
    "make run": "builds the environment and serves until Ctrl-C (the fixture here runs the same serve)",
    "make test": "runs the whole suite, this test included",
    "sudo .venv/bin/stockade service install": "installs systemd units on this machine (tests/service checks them)",
    "sudo /opt/stockade/bin/stockade service install": "installs systemd units on this machine (tests/service)",
    "sudo systemctl": "systemd on the host",
    "journalctl": "systemd on the host",
    "python3 -m venv /opt/stockade": "installs into /opt from the package index (network)",
    "/opt/stockade/bin/pip": "installs into /opt from the package index (network)",
    "claude mcp add": "needs the Claude Code client (its configs are checked in tests/docs/test_clients.py)",
    "stockade perimeter serve": "takes over this host's firewall (tests/perimeter runs it in a netns)",
    "STOCKADE_KNOCK_KEY=... stockade knock 203.0.113.5": "needs the real server at 203.0.113.5 and SSH to it",
    "export STOCKADE_KNOCK_KEY=": "the knock below needs a real server on the Internet",
    "stockade knock 203.0.113.5": "needs the real server at 203.0.113.5 and SSH to it",
    "fwknop -n laptop": "needs Debian's fwknop client and a real server at 203.0.113.5",
    "stockade bench egress": "a benchmark (minutes of load); tests/bench runs the benchmarks",
    "stockade bench gateway": "a benchmark (minutes of load); tests/bench runs the benchmarks",
}

# Commands run under another entry (exact text).
SAME_AS = {"stockade pack install ./my-pack": "docs/packs.md's line, run there after the page's keygen, sign and trust"}

# Synopsis lines and third-party programs: the concrete commands run instead.
REALIZE = {
    # The demo gateway has this home: the README's serve and demo run on homes of their own.
    "stockade serve --port 0 --dashboard-port 0": ["stockade init --home {work}/served",
                                                   "stockade serve --port 0 --dashboard-port 0 --home {work}/served"],
    "stockade audit session 3f9c... [--json]": ["stockade audit session {session}",
                                                 "stockade audit session {session} --json"],
    "stockade audit replay --policy ./candidate/ [--since T] [--until T] [--agent A] [--json]": [
        "stockade audit replay --policy ./candidate/",
        "stockade audit replay --policy ./candidate/ --since 2026-01-01 --until 2100-01-01 --agent alice --json"],
    "stockade pack keygen --out acme [--passphrase-file pw]": [
        "stockade pack keygen --out acme", "stockade pack keygen --out acme2 --passphrase-file pw"],
    "stockade pack sign ./my-pack --key acme.key [--expires-days 365] [--tarball my-pack.tar.gz]": [
        "stockade pack sign ./my-pack --key acme.key",
        "stockade pack sign ./my-pack --key acme.key --expires-days 365 --tarball my-pack.tar.gz"],
    "stockade pack install ./my-pack | my-pack.tar.gz [--allow-downgrade] [--new-publisher]": [
        "stockade pack install ./my-pack", "stockade pack install my-pack.tar.gz --allow-downgrade"],
    "stockade upstream add notes --pack notes [--ro DIR] [--rw DIR] [--env NAME=VALUE]": [
        "stockade upstream add notes --pack notes",
        "stockade upstream add notes --pack notes --replace --ro {work}/srv/docs --rw {work}/srv/repo --env TZ=UTC"],
    "stockade vault status [--json]": ["stockade vault status", "stockade vault status --json"],
    # The demo home has its vault already (the pages before this one store secrets): a fresh home.
    "stockade vault init": ["stockade init --home {work}/fresh", "stockade vault init --home {work}/fresh"],
    "stockade vault list [--json]": ["stockade vault list", "stockade vault list --json"],
    # mcp-server-time/-git and server-filesystem are not installed here: a stdio MCP server stands in.
    "stockade upstream add time -- /opt/mcp/venv/bin/mcp-server-time --local-timezone UTC": [
        f"stockade upstream add time -- {STANDIN}"],
    "stockade upstream add git --rw /srv/repo -- /opt/mcp/venv/bin/mcp-server-git --repository /srv/repo": [
        f"stockade upstream add git --rw {{work}}/srv/repo -- {STANDIN}"],
    "stockade upstream add fs --ro /srv/docs -- /opt/node/bin/node /opt/mcp/server-filesystem/dist/index.js "
    "/srv/docs": [f"stockade upstream add fs --ro {{work}}/srv/docs -- {STANDIN}"],
    "stockade upstream list | restart NAME | logs NAME | remove NAME": [
        "stockade upstream list", "stockade upstream restart time", "stockade upstream logs time",
        "stockade upstream remove fs"],
}

# Exit codes other than 0 that a page's command legitimately has here.
EXPECT = {
    "stockade doctor": (0, 1),                  # 1: a layer is degraded on this machine
    "stockade doctor --verify-install": (0, 1),  # 1: a development install has no signed manifest
    "stockade doctor --json | jq .checks.egress": (0,),
    "stockade policy validate broken.yaml --json": (1,),
    "stockade pack verify ./my-pack": (0,),
    "stockade status --home /var/lib/stockade": (0, 1),   # 1: degraded (a layer) but running
}

# Commands that read a hidden prompt on a terminal: what the reader types, given on stdin.
TYPED = {"stockade vault set gh_token --scope upstream.git --agent alice": "ghp_example\n"}

# Commands that run until Ctrl-C: started, given time to print, then interrupted.
FOLLOW = ("stockade watch", "stockade audit tail -f", "stockade serve", "stockade demo")
# ... and when they are up: a server once it has written its ports, the demo once it printed its banner.
READY: dict[str, Callable[[Path, bytes], bool]] = {
    "stockade serve": lambda work, _out: (work / "served" / "run" / "ports.json").exists(),
    "stockade demo": lambda _work, out: b"agent key" in out,
}

BROKEN_ORG = "version: 1\nrules:\n  - id: x\n    capability: filesystem.read\n    tier: maybe\n"
NEW_ORG = """version: 1
default: notify
rules:
  - {id: private, capability: filesystem.read, tier: blocked, when: {path_under: /workspace/private}}
  - {id: runs, capability: process.run, tier: approval_required}
"""
NOTES_PACK = """\
name: notes
version: 1.2.0
publisher: acme
mcp_server: {entry: "server:main"}
sandbox: {egress: ["api.notes.example:443"]}
"""


@dataclass
class Demo:
    server: Server
    work: Path
    env: dict[str, str]
    session: str
    held: list[subprocess.Popen[str]]

    @property
    def home(self) -> Path:
        return self.server.home

    def pending_approval(self, agent: str | None = None) -> str:
        """A new approval waiting for the owner: an agent's process.run, held by the policy (each
        time another agent unless named: a page may have granted one, e.g. ci, the capability)."""
        before = {a["approval"] for a in cli_json("approvals", "list", home=self.home)["approvals"]}
        key = self.server.agent(agent or f"held{len(self.held)}")
        body = ('{"jsonrpc":"2.0","id":1,"method":"capabilities.invoke","params":{"name":"process.run",'
                f'"arguments":{{"argv":["make","deploy","RUN={len(self.held)}"],"cwd":"/workspace"}}}}}}')
        # (each call differs: an identical held call joins the pending approval instead of a new one)
        self.held.append(subprocess.Popen(["curl", "-s", "-m", "600", f"{self.server.url}/rpc", "-H",
                                           f"Authorization: Bearer {key}", "-d", body],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = [a["approval"] for a in cli_json("approvals", "list", home=self.home)["approvals"]
                   if a["approval"] not in before]
            if now:
                return now[0]
            time.sleep(0.2)
        raise AssertionError("no approval appeared")


def _given_files(work: Path) -> None:
    """What the pages assume the reader has at hand, in the directory the commands run in."""
    for name, text in {"key.txt": "exchange-api-key\n", "secret.txt": "exchange-secret\n",
                       "token.txt": "gh-token\n", "v.txt": "shared\n", "new.txt": "exchange-2\n",
                       "pw": "publisher key passphrase\n", "broken.yaml": BROKEN_ORG,
                       "new-org.yaml": NEW_ORG}.items():
        (work / name).write_text(text)
    pack = work / "my-pack"
    shutil.copytree(ROOT / "examples" / "packs" / "textutils", pack)
    y = (pack / "pack.yaml").read_text()
    y = y.replace("name: textutils\n", "name: my-pack\n").replace("textutils.", "my_pack.")
    (pack / "pack.yaml").write_text(re.sub(r"^publisher: .*$", "publisher: acme", y, flags=re.M))
    shutil.copytree(ROOT / "examples" / "packs" / "exchange", work / "examples" / "packs" / "exchange")
    keys = cli_json("pack", "keygen", "--out", str(work / "example"))
    assert Path(keys["key"]).exists()
    for d in ("srv/repo", "srv/docs"):
        (work / d).mkdir(parents=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    base = tmp_path_factory.mktemp("doccmds")
    home, work = base / "home", base / "work"
    work.mkdir()
    run_cli("init", "--policy", "personal", home=home)
    _given_files(work)
    (work / "policies").symlink_to(home / "policies")       # `policy validate policies/org.yaml` from the home
    shutil.copytree(home / "policies", work / "candidate")
    env = {"HOME": str(base), "STOCKADE_HOME": str(home), "STOCKADE_VAULT_PASSPHRASE": PASS,
           "STOCKADE_VAULT_NEW_PASSPHRASE": PASS + " rekeyed",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run_cli("vault", "init", home=home, env=env)
    run_cli("audit", "checkpoint", "export", "--fresh", home=home)   # as on a home whose gateway has run
    srv = start_server(home, env=env)
    try:
        run_cli("vault", "unseal", home=home, env=env)
        for name in ("alice", "ci", "demo"):
            srv.agent(name)
        sess = srv.rpc(srv.agent("alice"), "session.create").json()["result"]["session"]
        srv.rpc(srv.agent("alice"), "capabilities.invoke", {"name": "system.time", "session": sess})
        env.update(KEY=srv.agent("demo"), SECRET="exchange-secret")
        d = Demo(srv, work, env, sess, [])
        yield d
    finally:
        srv.stop()
        for p in d.held if "d" in locals() else []:
            p.kill()


def substitute(text: str, d: Demo) -> str:
    """The values a reader has that the page cannot know."""
    dash = d.server.ports.get("dashboard")
    text = (text.replace("stk_...", d.server.agent("demo"))
            .replace("http://127.0.0.1:7700", d.server.url)
            .replace("https://127.0.0.1:7800", f"https://127.0.0.1:{dash}")
            .replace("/var/lib/stockade", str(d.home))
            .replace("3f9c...", d.session)
            .replace("{session}", d.session).replace("{work}", str(d.work)))
    for placeholder in ("apr_3f9c0b12aa01", "apr_..."):
        while placeholder in text:
            text = text.replace(placeholder, d.pending_approval(), 1)
    return text


def forget_laptop(d: Demo) -> None:
    """README and docs/perimeter.md each make the 'laptop' stanza: each page starts without it."""
    cfg = yaml.safe_load((d.home / "stockade.yaml").read_text())
    per = cfg.get("perimeter") or {}
    per["stanzas"] = [x for x in per.get("stanzas") or [] if x.get("name") != "laptop"]
    (d.home / "stockade.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def notes_pack(d: Demo) -> None:
    """The pack docs/upstream.md shows (its pack.yaml, a small MCP server as src/server.py),
    signed by the acme key of docs/packs.md; the page's --url `notes` server is another example."""
    pack = d.work / "notes"
    if not pack.exists():
        (pack / "src").mkdir(parents=True)
        (pack / "pack.yaml").write_text(NOTES_PACK)
        shutil.copy(ROOT / "tests" / "upstream" / "tiny_server.py", pack / "src" / "server.py")
    if not (d.work / "acme.key").exists():
        cli_json("pack", "keygen", "--out", str(d.work / "acme"))
    cli_json("pack", "sign", str(pack), "--key", str(d.work / "acme.key"))
    run_cli("upstream", "remove", "notes", home=d.home, check=False)


BEFORE: dict[str, Callable[[Demo], None]] = {
    "stockade perimeter keygen --name laptop": forget_laptop,
    "stockade pack trust acme.pub --name acme && stockade pack install ./notes": notes_pack,
}


def run_in_process(argv: list[str], d: Demo, stdin: str | None, redirect: Path | None = None) -> tuple[int, str]:
    """The command in this process; `redirect`: where its stdout goes (`> file`)."""
    from stockade.cli.main import cli
    from stockade.core import logs

    old = os.getcwd()
    os.chdir(d.work)
    saved = (logs.log.handlers[:], logs.log.level, logs.log.propagate, logs._handler)
    try:
        r = CliRunner().invoke(cli, argv, input=stdin, env=d.env, catch_exceptions=True)
        if redirect is not None:
            redirect.write_text(r.stdout)
    finally:
        os.chdir(old)
        # the command pointed stockade's logger at the runner's (now closed) stderr and stopped it
        # propagating: put it back as it was, or a later test's caplog on this worker sees nothing
        logs.log.handlers[:], logs.log.level, logs.log.propagate, logs._handler = saved
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        return 99, "".join(traceback.format_exception(r.exception)) + r.output
    return r.exit_code, r.output


def run_one(cmd: str, d: Demo, typed: str | None = None) -> tuple[int, str]:
    if any(t in cmd for t in ("|", "&&", ";", "$(", "$")) or not cmd.startswith("stockade "):
        p = subprocess.run(["bash", "-c", cmd], cwd=d.work, env={**os.environ, **d.env}, capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout + p.stderr
    words = shlex.split(cmd)[1:]
    stdin = typed
    for op in ("<", ">"):
        if op in words:
            i = words.index(op)
            target = Path(os.path.expanduser(words[i + 1].replace("~", d.env["HOME"], 1)))
            target = target if target.is_absolute() else d.work / target
            words = words[:i] + words[i + 2:]
            if op == "<":
                stdin = target.read_text()
            else:
                return run_in_process(words, d, stdin, target)
    words = [w.replace("~", d.env["HOME"], 1) if w.startswith("~") else w for w in words]
    return run_in_process(words, d, stdin)


def run_follow(cmd: str, d: Demo) -> tuple[int, str]:
    """Start it, wait until it is up (READY) and has printed what it had (1 s quiet, or 3 s of
    nothing), then Ctrl-C: it must still be running then and end cleanly."""
    ready = next((f for prefix, f in READY.items() if cmd.startswith(prefix)), lambda _w, _o: True)
    p = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=d.work, env={**os.environ, **d.env},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert p.stdout is not None
    fd, out = p.stdout.fileno(), b""
    try:
        deadline, quiet = time.monotonic() + 120, time.monotonic() + 3
        while p.poll() is None and time.monotonic() < deadline and (
                time.monotonic() < quiet or not ready(d.work, out)):
            if select.select([fd], [], [], 0.2)[0]:
                out += os.read(fd, 65536)
                quiet = time.monotonic() + 1       # Ctrl-C once it has printed what it had, as a person would
        assert p.poll() is None, f"{cmd} ended by itself ({p.returncode}): {out!r}"
        p.send_signal(signal.SIGINT)
        p.wait(30)
        return (0 if p.returncode in (0, 130, -signal.SIGINT) else p.returncode), out.decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()


COMMANDS = extract()


def _plan(cmd: str) -> tuple[str | None, list[str]]:
    """(reason it cannot run here or None, the commands to run)."""
    if cmd in SAME_AS:
        return SAME_AS[cmd], []
    for prefix, why in NOT_HERE.items():
        if cmd.startswith(prefix):
            return why, []
    return None, REALIZE.get(cmd, [cmd])


def test_the_docs_have_commands_and_the_tables_are_current() -> None:
    texts = {c.text for c in COMMANDS}
    assert len(COMMANDS) >= 60, len(COMMANDS)
    assert not set(REALIZE) - texts, f"REALIZE names commands no page shows: {set(REALIZE) - texts}"
    assert not set(EXPECT) - texts, f"EXPECT names commands no page shows: {set(EXPECT) - texts}"
    assert not set(SAME_AS) - texts, f"SAME_AS names commands no page shows: {set(SAME_AS) - texts}"
    unused = [p for p in NOT_HERE if not any(t.startswith(p) for t in texts)]
    assert not unused, f"NOT_HERE names commands no page shows: {unused}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_doc_command_runs(cmd: Cmd, demo: Demo) -> None:
    why, runs = _plan(cmd.text)
    if why is not None:
        pytest.skip(f"not here: {why}")
    for prefix, hook in BEFORE.items():
        if cmd.text.startswith(prefix):
            hook(demo)
    for text in runs:
        real = substitute(text, demo)
        if real.startswith(FOLLOW):
            code, out = run_follow(real, demo)
        else:
            code, out = run_one(real, demo, TYPED.get(cmd.text))
        assert code in EXPECT.get(cmd.text, (0,)), f"{cmd.id}: {real}\n-> exit {code}\n{out[-3000:]}"


def test_the_approvals_page_runs_on_a_held_call(demo: Demo) -> None:
    """The dashboard page's sequence on one approval: list shows it, show names it, approve ends it."""
    apr = demo.pending_approval("ops")      # not ci: the page grants ci process.run for 30 minutes
    listed = run_cli("approvals", "list", home=demo.home).stdout
    assert apr in listed and "ops -> process.run" in listed, listed
    assert cli_json("approvals", "show", apr, home=demo.home)["status"] == "pending"
