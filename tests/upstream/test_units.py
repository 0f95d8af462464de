"""The pure parts of upstream: upstream.yaml parsing, tool mirroring, result shaping, the launch
spec, the long-lived sandbox's Landlock rules, the restart backoff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stockade.core.errors import ConfigError
from stockade.sandbox import landlock
from stockade.sandbox.longlived import Bind, Spec, check_bind, landlock_paths
from stockade.upstream import config, confine, tools
from stockade.upstream.supervisor import backoff

OBJ = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}


def _tool(name: str, schema: object = OBJ, **kw: object) -> dict[str, object]:
    return {"name": name, "inputSchema": schema, **kw}


def test_tools_become_namespaced_capabilities_with_their_schema() -> None:
    m = tools.mirror("git", [_tool("git_status", annotations={"readOnlyHint": True}), _tool("Git-Commit")])
    names = [d.name for d in m.definitions]
    assert names == ["git.git_commit", "git.git_status"]
    assert m.tool_of == {"git.git_status": "git_status", "git.git_commit": "Git-Commit"}
    status, commit = m.definitions[1], m.definitions[0]
    assert status.input_schema == OBJ and status.execution == "upstream" and status.source == "upstream:git"
    assert not status.side_effects and status.default_tier == "notify"
    assert commit.side_effects and commit.default_tier == "approval_required"
    assert status.validator.is_valid({"x": "a"}) and not status.validator.is_valid({"x": 1})


@pytest.mark.parametrize("tool, why", [
    (_tool("a b"), "not usable"),
    (_tool("ok", {"type": "string"}), "not an object schema"),
    (_tool("ok", {"type": "object", "properties": {"x": {"$ref": "https://evil.example/s.json"}}}), "outside"),
    (_tool("ok", {"type": "object", "properties": {"x": {"type": 5}}}), "invalid JSON Schema"),
    (_tool("ok", {"type": "object", "description": "x" * 70000}), "larger than"),
    (_tool("ok", None), "not an object schema"),
])
def test_unusable_tools_are_left_out_and_reported(tool: dict[str, object], why: str) -> None:
    m = tools.mirror("srv", [tool, _tool("fine")])
    assert [d.name for d in m.definitions] == ["srv.fine"]
    assert len(m.skipped) == 1 and why in m.skipped[0]


def test_tools_sharing_a_capability_name_are_both_left_out() -> None:
    m = tools.mirror("s", [_tool("read-file"), _tool("read_file"), _tool("other")])
    assert [d.name for d in m.definitions] == ["s.other"] and "two tools" in m.skipped[0]


def test_the_tool_list_is_bounded() -> None:
    m = tools.mirror("s", [_tool(f"t{i}") for i in range(tools.MAX_TOOLS + 5)])
    assert len(m.definitions) == tools.MAX_TOOLS and "5 tools past" in m.skipped[-1]


def test_results_keep_only_object_content_and_report_their_size() -> None:
    raw = {"content": [{"type": "text", "text": "hi"}, "junk", 3], "isError": True,
           "structuredContent": {"a": 1}, "_meta": {"x": "y"}}
    out, size = tools.shape_result(raw, 100)
    assert out == {"content": [{"type": "text", "text": "hi"}], "is_error": True, "structured": {"a": 1}}
    assert size == len(json.dumps(out, separators=(",", ":")))
    assert tools.definition("s", "s.t", _tool("t")).output_validator.is_valid(out)
    out, _ = tools.shape_result({"content": "nope", "structuredContent": [1]}, 100)
    assert out == {"content": [], "is_error": False}


GOOD = """\
servers:
  time:
    command: /opt/venv/bin/mcp-server-time
    args: [--local-timezone, UTC]
    env: {TOKEN: "Bearer ${secret:time_token}", PLAIN: x}
    egress: ["api.example.org:443"]
    filesystem: [{path: /opt/venv}, {path: /srv/data, mode: rw}]
    max_output_bytes: 64KiB
"""


def test_upstream_yaml_parses_and_renders_back() -> None:
    servers = config.parse(GOOD)
    t = servers["time"]
    assert t.max_output_bytes == 65536 and t.instances == "per-agent"
    assert t.secret_names() == ["time_token"]
    assert config.parse(config.render(servers)) == servers


@pytest.mark.parametrize("text, where", [
    ("servers: {Time: {command: /bin/true}}", "server name"),
    ("servers: {t: {command: bin/true}}", "absolute"),
    ("servers: {t: {command: /bin/true, filesystem: [{path: /etc}]}}", "sandbox's own root"),
    ("servers: {t: {command: /bin/true, filesystem: [{path: /proc/1/root}]}}", "sandbox's own root"),
    ("servers: {t: {command: /bin/true, filesystem: [{path: /srv/../etc}]}}", "normal form"),
    ("servers: {t: {command: /bin/true, env: {'A B': x}}}", "env"),
    ("servers: {t: {command: /bin/true, nope: 1}}", "nope"),
    ("servers: {t: {command: /bin/true, instances: global}}", "instances"),
])
def test_bad_upstream_yaml_is_refused_with_its_line(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(text, "upstream.yaml")
    assert any(where in x and x.startswith("upstream.yaml:1") for x in e.value.errors), e.value.errors


@pytest.mark.parametrize("path, ok", [("/srv/x", True), ("/tmp/a/b", True), ("/tmp", False), ("/", False),
                                      ("/usr/local", False), ("relative", False), ("/etc/ssl", False),
                                      ("/srv//x", False), ("/srv/x/", False)])
def test_which_directories_a_server_may_see(path: str, ok: bool) -> None:
    assert (check_bind(path) is None) is ok


def test_launch_spec_round_trips_and_holds_only_what_it_is_given() -> None:
    cfg = config.parse(GOOD)["time"]
    s = confine.spec(cfg, {"TOKEN": "Bearer v"}, 100005, "/run/netns/x", ("/sys/fs/cgroup/a/cgroup.procs",), "/d",
                     ("api.example.org:443",))
    assert Spec.from_json(s.to_json()) == s
    assert s.argv == ("/opt/venv/bin/mcp-server-time", "--local-timezone", "UTC")
    assert s.env == {**confine.BASE_ENV, "STOCKADE_DATA": "/data", "TOKEN": "Bearer v"}
    assert s.binds == (Bind("/opt/venv", True), Bind("/srv/data", False), Bind("/d", False, "/data"))
    assert s.connect_ports == (443,) and s.uid == s.gid == 100005


def test_writable_directories_are_not_executable() -> None:
    rules = dict(landlock_paths((Bind("/opt/venv", True), Bind("/srv/data", False)), {}))
    assert rules["/opt/venv"] == landlock.RX
    assert rules["/srv/data"] == landlock.RW & ~landlock.EXECUTE
    assert not rules["/tmp"] & landlock.EXECUTE and not rules["/etc"] & landlock.WRITE_FILE


def test_restart_backoff_doubles_to_a_minute() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4, 7, 8, 50)] == [1, 2, 4, 8, 60, 60, 60]


def test_a_server_is_granted_its_entries_that_the_agents_policy_allows() -> None:
    cfg = config.parse("servers: {s: {command: /bin/true, egress: ['a.example:443', '198.51.100.1:80']}}")["s"]

    class Egress:
        def profile(self, agent: str) -> list[str]:
            return {"wide": ["198.51.100.1:80", "a.example:443", "b.example:443"], "some": ["198.51.100.1:80"]}.get(
                agent, [])

    assert confine.granted(Egress(), "wide", cfg) == ("a.example:443", "198.51.100.1:80")
    assert confine.granted(Egress(), "some", cfg) == ("198.51.100.1:80",)
    assert confine.granted(Egress(), "none", cfg) == ()
    assert confine.granted(None, "wide", cfg) == ()      # no egress part: only lo


@pytest.mark.parametrize("url, ok", [
    ("http://127.0.0.1:8931/mcp", True), ("https://localhost/mcp", True), ("http://[::1]:9/mcp", True),
    ("http://127.8.9.10:1/x", True), ("http://192.0.2.1/mcp", False), ("http://example.org/mcp", False),
    ("http://localhost.example.org/mcp", False), ("ftp://127.0.0.1/mcp", False), ("http://u:p@127.0.0.1/mcp", False),
    ("http://127.0.0.1:0/mcp", False), ("http://127.0.0.1/mcp#x", False), ("http://127.0.0.1/a b", False),
    ("http://127.0.0.1:99999/mcp", False),
])
def test_a_url_server_must_be_on_loopback(url: str, ok: bool) -> None:
    assert (config.loopback_url_problem(url) is None) is ok, url


def test_a_url_server_renders_back_and_names_its_header_secrets() -> None:
    text = ("servers:\n  notes:\n    url: http://127.0.0.1:8931/mcp\n"
            "    headers: {Authorization: 'Bearer ${secret:tok}'}\n")
    servers = config.parse(text)
    assert servers["notes"].is_http and servers["notes"].secret_names() == ["tok"]
    assert config.parse(config.render(servers)) == servers


@pytest.mark.parametrize("entry, why", [
    ("{url: 'http://127.0.0.1:1/mcp', command: /bin/true}", "give one of"),
    ("{}", "give one of"),
    ("{url: 'http://127.0.0.1:1/mcp', env: {A: b}}", "only for a server stockade runs"),
    ("{url: 'http://127.0.0.1:1/mcp', filesystem: [{path: /srv}]}", "only for a server stockade runs"),
    ("{command: /bin/true, headers: {A: b}}", "only for a url server"),
    ("{url: 'http://127.0.0.1:1/mcp', headers: {Host: evil}}", "not a header name"),
    ("{url: 'http://127.0.0.1:1/mcp', headers: {Mcp-Session-Id: x}}", "not a header name"),
    ("{url: 'http://127.0.0.1:1/mcp', headers: {X-A: \"a\\r\\nB: c\"}}", "one line"),
])
def test_a_url_server_refuses_what_it_cannot_honour(entry: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(f"servers:\n  notes: {entry}\n")
    assert why in "; ".join(e.value.errors), e.value.errors


def test_an_instances_hosts_file_lists_its_resolved_names_and_is_rewritten_in_place(tmp_path: Path) -> None:
    class Egress:
        answer = ["198.51.100.7", "198.51.100.8"]

        def status(self) -> dict[str, object]:
            git = {"api.example.org": {"allowed": self.answer, "refused": ["10.0.0.1"]}}
            return {"alice.up-git": {"resolved": git},
                    "alice.up-fs": {"resolved": {"other.example.org": {"allowed": ["203.0.113.9"]}}}}

    class H:
        run = tmp_path

    eg = Egress()
    path = confine.write_hosts(H(), eg, "alice", "git")    # type: ignore[arg-type]
    text = Path(path).read_text()
    assert text.splitlines()[2:] == ["198.51.100.7 api.example.org", "198.51.100.8 api.example.org"], text
    assert "10.0.0.1" not in text and "other.example.org" not in text
    inode = os.stat(path).st_ino
    eg.answer = ["198.51.100.9"]
    confine.write_hosts(H(), eg, "alice", "git")           # type: ignore[arg-type]
    assert Path(path).read_text().splitlines()[2:] == ["198.51.100.9 api.example.org"]
    assert os.stat(path).st_ino == inode      # the running server's bind mount sees it
    assert confine.hosts_text({}) == "127.0.0.1 localhost upstream\n::1 localhost ip6-localhost\n"
    assert confine.write_hosts(H(), None, "bob", "git") and confine.resolved_names(None, "bob", "git") == {}


# -- read-only hints in policy (the personal template's upstream-reads rule) ---------------------
def _personal(hinted: set[str], org_extra: str = "") -> object:
    from stockade.policy import loader
    from stockade.policy.engine import compile_policy
    from stockade.policy.facts import Facts
    from stockade.policy.model import parse_policy

    facts = Facts(read_only=lambda cap: cap in hinted)
    ctx = {"home": "/nonexistent-home"}
    text = loader.template_text("personal").replace("rules:\n", "rules:\n" + org_extra, 1)
    org = parse_policy(text, "org.yaml", "org", ctx=ctx, facts=facts)
    return compile_policy(loader.load_system(ctx, facts), org, {})


def test_a_read_only_upstream_tool_defaults_to_notify_and_a_writing_one_to_approval() -> None:
    from stockade.policy.engine import evaluate
    from stockade.policy.model import APPROVAL, NOTIFY

    pol = _personal({"git.git_status"})
    v = evaluate(pol, "alice", "git.git_status", {})               # type: ignore[arg-type]
    assert v.tier == NOTIFY and v.rule is not None and v.rule.rule_id == "upstream-reads"
    v = evaluate(pol, "alice", "git.git_commit", {"message": "x"})  # type: ignore[arg-type]
    assert v.tier == APPROVAL and v.rule is None and v.layer == "default"
    # a rule naming the server decides over the hint, whichever way
    extra = "  - {id: git-all, capability: 'git.*', tier: approval_required}\n"
    v = evaluate(_personal({"git.git_status"}, extra), "alice", "git.git_status", {})   # type: ignore[arg-type]
    assert v.tier == APPROVAL and v.rule is not None and v.rule.rule_id == "git-all"


@pytest.mark.parametrize("rule, why", [
    ("{capability: '*', tier: autonomous, when: {read_only_hint: true}}", "may be notify or approval_required"),
    ("{capability: '*', tier: blocked, when: {read_only_hint: true}}", "may be notify or approval_required"),
    ("{capability: '*', tier: notify, when: {not: {read_only_hint: true}}}", "not allowed under not"),
    ("{capability: '*', tier: notify, when: {read_only_hint: false}}", "expected true"),
])
def test_the_hint_never_loosens_beyond_notify(rule: str, why: str) -> None:
    from stockade.policy.model import parse_policy

    with pytest.raises(ConfigError) as e:
        parse_policy(f"version: 1\nrules:\n  - {rule}\n", "org.yaml", "org")
    assert why in "; ".join(e.value.errors), e.value.errors


def test_only_upstream_tools_annotated_read_only_carry_the_hint() -> None:
    from stockade.policy.facts import registry_read_only

    m = tools.mirror("git", [_tool("git_status", annotations={"readOnlyHint": True}), _tool("git_commit")])

    class Reg(dict):  # type: ignore[type-arg]
        pass

    reg = Reg({d.name: d for d in m.definitions})
    hint = registry_read_only(reg)
    assert hint("git.git_status") and not hint("git.git_commit") and not hint("filesystem.read")


@pytest.mark.parametrize("entry, why", [
    ("{pack: tinypack, command: /bin/true}", "give one of"),
    ("{pack: tinypack, args: [x]}", "pack.yaml asks for"),
    ("{pack: tinypack, egress: ['198.51.100.1:443']}", "pack.yaml asks for"),
    ("{pack: Tiny}", "pack"),
])
def test_a_pack_server_takes_its_entry_and_egress_from_the_signed_pack(entry: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(f"servers:\n  tinypack: {entry}\n")
    assert why in "; ".join(e.value.errors), e.value.errors
    ok = config.parse("servers:\n  tinypack: {pack: tinypack, env: {A: b}, filesystem: [{path: /srv/x}]}\n")
    assert ok["tinypack"].pack == "tinypack" and config.parse(config.render(ok)) == ok


def test_a_pack_may_be_only_an_mcp_server() -> None:
    from stockade.packs.manifest import parse_pack_yaml

    spec = parse_pack_yaml("name: tinypack\nversion: 1.0.0\npublisher: t\nmcp_server: {entry: 'server:main'}\n")
    assert spec.mcp_server is not None and spec.mcp_server.entry == "server:main" and spec.capabilities == []
    with pytest.raises(ConfigError) as e:
        parse_pack_yaml("name: tinypack\nversion: 1.0.0\npublisher: t\n")
    assert "at least one capability or an mcp_server" in "; ".join(e.value.errors)
    with pytest.raises(ConfigError):
        parse_pack_yaml("name: tinypack\nversion: 1.0.0\npublisher: t\nmcp_server: {entry: '../x:main'}\n")
