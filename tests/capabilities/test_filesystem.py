"""filesystem.* against real directories: behaviour, caps, trash, and hostile input.

Every hostile call must return a structured error and change nothing anywhere (workspace,
trash, outside): the whole tmp tree is snapshotted before and compared after.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from stockade.capabilities.impl import filesystem as fs
from stockade.capabilities.registry import load_registry
from stockade.core.errors import StockadeError

from .conftest import SECRET, Env

CAPS = {
    "filesystem.read": fs.fs_read, "filesystem.write": fs.fs_write, "filesystem.append": fs.fs_append,
    "filesystem.list": fs.fs_list, "filesystem.stat": fs.fs_stat, "filesystem.mkdir": fs.fs_mkdir,
    "filesystem.move": fs.fs_move, "filesystem.copy": fs.fs_copy, "filesystem.search": fs.fs_search,
    "filesystem.search_content": fs.fs_search_content, "filesystem.delete": fs.fs_delete,
    "filesystem.restore": fs.fs_restore,
}


@pytest.fixture(scope="module")
def registry() -> Any:
    return load_registry()


def call(env: Env, name: str, args: dict[str, Any], registry: Any = None, **profile: Any) -> dict[str, Any]:
    """Validate like the pipeline does (input and output schema), then run the handler."""
    if registry is not None:
        d = registry.get(name)
        errors = list(d.validator.iter_errors(args))
        if errors:
            raise StockadeError("InvalidInput", errors[0].message)
    out = CAPS[name](env.ctx(**profile), args)
    if registry is not None:
        assert registry.get(name).output_validator.is_valid(out), out
    json.dumps(out)
    return out


def fails(env: Env, name: str, args: dict[str, Any], types: tuple[str, ...], registry: Any = None,
          **profile: Any) -> StockadeError:
    before = env.snapshot()
    with pytest.raises(StockadeError) as ei:
        call(env, name, args, registry, **profile)
    assert ei.value.type in types, (name, args, ei.value)
    assert env.snapshot() == before, f"{name} {args} changed the tree"
    return ei.value


# -- hostile input: a matrix over every capability -----------------------------------------

BAD_PATHS = [
    ("..", ("PathDenied",)),
    ("dir/../../outside/secret", ("PathDenied",)),
    ("/etc/passwd", ("PathDenied",)),
    ("/workspace/../outside/secret", ("PathDenied",)),
    ("out/secret", ("PathDenied",)),
    ("abs_secret", ("PathDenied",)),
    ("root/etc/passwd", ("PathDenied",)),
    ("magic/etc/hostname", ("PathDenied",)),
    ("dir/sneaky", ("PathDenied",)),
    ("loop1", ("PathDenied",)),
    ("a\x00b", ("InvalidInput",)),
    ("x\n", ("InvalidInput",)),
    ("y" * 5000, ("InvalidInput",)),
    ("/tmp/x", ("PathDenied",)),
]


def _args_for(name: str, path: str) -> list[dict[str, Any]]:
    return {
        "filesystem.read": [{"path": path}],
        "filesystem.write": [{"path": path + "/new", "content": "x"}],
        "filesystem.append": [{"path": path, "content": "pwned"}],
        "filesystem.list": [{"path": path}, {"path": path, "recursive": True}],
        "filesystem.stat": [{"path": path, "follow_symlinks": True}],
        "filesystem.mkdir": [{"path": path + "/d"}],
        "filesystem.move": [{"source": "dir/file.txt", "destination": path + "/moved"},
                            {"source": path + "/x", "destination": "stolen"}],
        "filesystem.copy": [{"source": path, "destination": "stolen"},
                            {"source": "dir/file.txt", "destination": path + "/copied"}],
        "filesystem.search": [{"path": path, "pattern": "*"}],
        "filesystem.search_content": [{"path": path, "query": "SECRET"}],
        "filesystem.delete": [{"path": path + "/x"}],
        "filesystem.restore": [{"path": path}],
    }[name]


@pytest.mark.parametrize("name", sorted(CAPS))
def test_hostile_paths_change_nothing(env: Env, mode: str, name: str) -> None:
    for path, types in BAD_PATHS:
        for args in _args_for(name, path):
            # restore of a bad path finds nothing; delete of "<bad>/x" is denied or missing
            fails(env, name, args, (*types, "FileNotFound"))


@pytest.mark.parametrize("name", ["filesystem.read", "filesystem.write", "filesystem.move",
                                  "filesystem.search_content", "filesystem.list", "filesystem.restore"])
def test_schema_refuses_huge_and_unknown_arguments(env: Env, registry: Any, name: str) -> None:
    base = _args_for(name, "dir/file.txt")[0]
    fails(env, name, {**base, "unexpected": 1}, ("InvalidInput",), registry)
    key = "source" if "source" in base else "path"
    fails(env, name, {**base, key: "a/" * 3000}, ("InvalidInput",), registry)
    fails(env, name, {**base, key: 12}, ("InvalidInput",), registry)


def test_definitions_are_capped(registry: Any) -> None:
    """Every string has a maxLength, every array a maxItems, every object closes its properties."""
    def walk(schema: Any, where: str) -> None:
        if not isinstance(schema, dict):
            return
        t = schema.get("type")
        if t == "string":
            assert "maxLength" in schema or "pattern" in schema or "enum" in schema, where
        if t == "array":
            assert "maxItems" in schema, where
        if t == "object" and "properties" in schema:
            assert schema.get("additionalProperties") is False, where
        for k, v in schema.items():
            if isinstance(v, dict):
                walk(v, f"{where}.{k}")
        for k, v in (schema.get("properties") or {}).items():
            walk(v, f"{where}.{k}")

    names = [d for d in registry.all() if d.name.startswith(("filesystem.", "process."))]
    assert len(names) == 13
    for d in names:
        assert d.execution == "sandbox"
        walk(d.input_schema, d.name)
        assert d.side_effects == (d.name.split(".")[1] in ("write", "append", "mkdir", "move", "copy",
                                                          "delete", "restore", "run")), d.name


# -- read --------------------------------------------------------------------------------------


def test_read(env: Env, registry: Any, mode: str) -> None:
    out = call(env, "filesystem.read", {"path": "dir/file.txt"}, registry)
    assert out["content"] == "hello\nworld\n" and out["size"] == 12 and not out["truncated"]
    assert out["path"] == "/workspace/dir/file.txt"
    out = call(env, "filesystem.read", {"path": "/workspace/dir/alias", "offset": 6, "max_bytes": 3}, registry)
    assert out["content"] == "wor" and out["truncated"] and out["bytes_read"] == 3
    out = call(env, "filesystem.read", {"path": "dir/file.txt", "encoding": "base64"}, registry)
    assert base64.b64decode(out["content"]) == b"hello\nworld\n"


def test_read_binary_and_split_utf8(env: Env, registry: Any) -> None:
    (env.ws / "bin").write_bytes(b"\xff\xfe\x00\x01")
    e = fails(env, "filesystem.read", {"path": "bin"}, ("InvalidInput",), registry)
    assert e.data["reason"] == "not_utf8"
    (env.ws / "u").write_text("é" * 10)   # 2 bytes each
    out = call(env, "filesystem.read", {"path": "u", "max_bytes": 5}, registry)
    assert out["content"] == "éé" and out["bytes_read"] == 4 and out["truncated"]


def test_read_is_capped_by_the_sandbox_output_limit(env: Env, registry: Any) -> None:
    (env.ws / "big").write_bytes(b"a" * 300_000)
    out = call(env, "filesystem.read", {"path": "big", "max_bytes": 8_000_000}, registry, max_output_bytes=65536)
    assert out["truncated"] and len(json.dumps(out)) <= 65536
    (env.ws / "ctl").write_bytes(b"\x01" * 60_000)    # JSON escapes make this 6x bigger
    out = call(env, "filesystem.read", {"path": "ctl"}, registry, max_output_bytes=65536)
    assert out["truncated"] and len(json.dumps(out)) <= 65536


def test_read_special_files(env: Env, registry: Any) -> None:
    fails(env, "filesystem.read", {"path": "dir"}, ("InvalidInput",), registry)
    os.mkfifo(env.ws / "fifo")
    t = time.monotonic()
    fails(env, "filesystem.read", {"path": "fifo"}, ("InvalidInput",), registry)   # never blocks
    assert time.monotonic() - t < 5
    fails(env, "filesystem.read", {"path": "missing"}, ("FileNotFound",), registry)
    fails(env, "filesystem.read", {"path": "dir/file.txt/x"}, ("FileNotFound",), registry)


# -- write / append ------------------------------------------------------------------------------


def test_write(env: Env, registry: Any, mode: str) -> None:
    out = call(env, "filesystem.write", {"path": "new/deep/f.txt", "content": "hi"}, registry)
    assert out == {"path": "/workspace/new/deep/f.txt", "size": 2, "created": True}
    assert (env.ws / "new/deep/f.txt").read_text() == "hi"
    os.chmod(env.ws / "new/deep/f.txt", 0o600)
    out = call(env, "filesystem.write", {"path": "new/deep/f.txt", "content": "aGk=", "encoding": "base64"},
               registry)
    assert out["created"] is False and (env.ws / "new/deep/f.txt").read_bytes() == b"hi"
    assert (env.ws / "new/deep/f.txt").stat().st_mode & 0o777 == 0o600     # mode kept
    fails(env, "filesystem.write", {"path": "new/deep/f.txt", "content": "x", "overwrite": False},
          ("InvalidInput",), registry)
    fails(env, "filesystem.write", {"path": "x", "content": "@@", "encoding": "base64"}, ("InvalidInput",), registry)
    fails(env, "filesystem.write", {"path": "dir", "content": "x"}, ("InvalidInput",), registry)
    fails(env, "filesystem.write", {"path": "nope/f", "content": "x", "parents": False}, ("FileNotFound",), registry)
    fails(env, "filesystem.write", {"path": ".", "content": "x"}, ("InvalidInput",), registry)
    fails(env, "filesystem.write", {"path": "x", "content": "\ud800"}, ("InvalidInput",), registry)
    assert not [n for n in os.listdir(env.ws / "new/deep") if n.startswith(".stockade-")]   # no temp left


def test_write_replaces_a_symlink_instead_of_following_it(env: Env, registry: Any, mode: str) -> None:
    call(env, "filesystem.write", {"path": "abs_secret", "content": "mine"}, registry)
    assert (env.outside / "secret").read_bytes() == SECRET
    assert not (env.ws / "abs_secret").is_symlink() and (env.ws / "abs_secret").read_text() == "mine"


def test_write_to_shared_is_protected(env: Env, registry: Any) -> None:
    assert call(env, "filesystem.read", {"path": "/shared/readme"}, registry)["content"] == "shared\n"
    fails(env, "filesystem.write", {"path": "/shared/readme", "content": "x"}, ("PathWriteProtected",), registry)
    fails(env, "filesystem.delete", {"path": "/shared/readme"}, ("PathWriteProtected",), registry)
    fails(env, "filesystem.move", {"source": "/shared/readme", "destination": "r"}, ("PathWriteProtected",),
          registry)
    call(env, "filesystem.copy", {"source": "/shared/readme", "destination": "r"}, registry)
    assert (env.ws / "r").read_text() == "shared\n"


def test_append(env: Env, registry: Any, mode: str) -> None:
    assert call(env, "filesystem.append", {"path": "log/a.log", "content": "1\n"}, registry)["size"] == 2
    out = call(env, "filesystem.append", {"path": "log/a.log", "content": "Mgo=", "encoding": "base64"}, registry)
    assert out == {"path": "/workspace/log/a.log", "appended": 2, "size": 4}
    assert (env.ws / "log/a.log").read_text() == "1\n2\n"
    call(env, "filesystem.append", {"path": "dir/alias", "content": "!"}, registry)   # inside link: followed
    assert (env.ws / "dir/file.txt").read_text() == "hello\nworld\n!"
    fails(env, "filesystem.append", {"path": "abs_secret", "content": "x"}, ("PathDenied",), registry)
    os.mkfifo(env.ws / "fifo")
    fails(env, "filesystem.append", {"path": "fifo", "content": "x"}, ("InvalidInput",), registry)


# -- list / stat / mkdir -----------------------------------------------------------------------------


def test_list(env: Env, registry: Any, mode: str) -> None:
    out = call(env, "filesystem.list", {}, registry)
    names = [e["name"] for e in out["entries"]]
    assert names == sorted(names) and "out" in names and "secret" not in names
    types = {e["name"]: e["type"] for e in out["entries"]}
    assert types["out"] == "symlink" and types["dir"] == "directory"
    out = call(env, "filesystem.list", {"recursive": True}, registry)
    paths_ = [e["path"] for e in out["entries"]]
    assert "/workspace/dir/file.txt" in paths_
    assert not any("secret" in p and not p.endswith(("abs_secret",)) for p in paths_)   # links not descended
    for i in range(30):
        (env.ws / "dir" / f"n{i:02d}").write_text("")
    out = call(env, "filesystem.list", {"path": "dir", "max_results": 10}, registry)
    assert out["count"] == 10 and out["truncated"]
    (env.ws / ".hidden").write_text("")
    out = call(env, "filesystem.list", {"include_hidden": False}, registry)
    assert ".hidden" not in [e["name"] for e in out["entries"]]
    fails(env, "filesystem.list", {"path": "dir/file.txt"}, ("InvalidInput",), registry)


def test_list_output_budget(env: Env, registry: Any) -> None:
    for i in range(400):
        (env.ws / ("f" * 200 + str(i))).write_text("")
    out = call(env, "filesystem.list", {"max_results": 10000}, registry, max_output_bytes=32768)
    assert out["truncated"] and len(json.dumps(out)) <= 32768


def test_stat(env: Env, registry: Any, mode: str) -> None:
    out = call(env, "filesystem.stat", {"path": "dir/file.txt"}, registry)
    assert out["exists"] and out["type"] == "file" and out["size"] == 12 and out["mode"] == "0644"
    out = call(env, "filesystem.stat", {"path": "out"}, registry)
    assert out["type"] == "symlink" and out["link_target"] == "../outside"
    out = call(env, "filesystem.stat", {"path": "dir/alias", "follow_symlinks": True}, registry)
    assert out["type"] == "file"
    assert call(env, "filesystem.stat", {"path": "nothere/x"}, registry) == {"path": "/workspace/nothere/x",
                                                                             "exists": False}
    fails(env, "filesystem.stat", {"path": "out/secret"}, ("PathDenied",), registry)


def test_mkdir(env: Env, registry: Any, mode: str) -> None:
    assert call(env, "filesystem.mkdir", {"path": "a/b/c"}, registry)["created"] is True
    assert call(env, "filesystem.mkdir", {"path": "a/b/c"}, registry)["created"] is False
    assert (env.ws / "a/b/c").is_dir()
    fails(env, "filesystem.mkdir", {"path": "dir/file.txt"}, ("InvalidInput",), registry)
    fails(env, "filesystem.mkdir", {"path": "x/y", "parents": False}, ("FileNotFound",), registry)
    fails(env, "filesystem.mkdir", {"path": "out/evil"}, ("PathDenied",), registry)
    assert call(env, "filesystem.mkdir", {"path": "q", "parents": False}, registry)["created"] is True
    assert call(env, "filesystem.mkdir", {"path": "q", "parents": False}, registry)["created"] is False
    e = fails(env, "filesystem.mkdir", {"path": "dir/file.txt", "parents": False}, ("InvalidInput",), registry)
    assert e.data["reason"] == "exists"


# -- move / copy -----------------------------------------------------------------------------------------


def test_move(env: Env, registry: Any, mode: str) -> None:
    call(env, "filesystem.move", {"source": "dir/file.txt", "destination": "m/f.txt"}, registry)
    assert (env.ws / "m/f.txt").read_text() == "hello\nworld\n" and not (env.ws / "dir/file.txt").exists()
    (env.ws / "other").write_text("o")
    fails(env, "filesystem.move", {"source": "other", "destination": "m/f.txt"}, ("InvalidInput",), registry)
    call(env, "filesystem.move", {"source": "other", "destination": "m/f.txt", "overwrite": True}, registry)
    assert (env.ws / "m/f.txt").read_text() == "o"
    call(env, "filesystem.move", {"source": "out", "destination": "moved_link"}, registry)   # the link itself
    assert os.readlink(env.ws / "moved_link") == "../outside" and (env.outside / "secret").read_bytes() == SECRET
    fails(env, "filesystem.move", {"source": "m", "destination": "m/inside"}, ("InvalidInput",), registry)
    fails(env, "filesystem.move", {"source": "ghost", "destination": "g"}, ("FileNotFound",), registry)
    fails(env, "filesystem.move", {"source": ".", "destination": "g"}, ("InvalidInput",), registry)


def test_move_across_mounts_falls_back_to_copy(env: Env, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """EXDEV (workspace and trash are different mounts in the sandbox) -> copy + remove."""
    (env.ws / "t" / "s").mkdir(parents=True)
    (env.ws / "t" / "s" / "f").write_text("data")
    os.symlink("s/f", env.ws / "t" / "l")
    real = fs._rename

    def exdev_once(sdir: int, sname: str, ddir: int, dname: str, overwrite: bool) -> None:
        if sname == "t":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(sdir, sname, ddir, dname, overwrite)

    monkeypatch.setattr(fs, "_rename", exdev_once)
    call(env, "filesystem.move", {"source": "t", "destination": "t2"})
    assert (env.ws / "t2/s/f").read_text() == "data" and os.readlink(env.ws / "t2/l") == "s/f"
    assert not (env.ws / "t").exists()
    assert not [n for n in os.listdir(env.ws) if n.startswith(".stockade-")]


def test_delete_into_a_trash_on_another_filesystem(env: Env, registry: Any) -> None:
    """A real EXDEV: the trash on tmpfs (/dev/shm), the workspace on disk."""
    from tests.conftest import need

    need(os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev != os.stat(env.ws).st_dev,
         "no second filesystem (/dev/shm) to move across")
    import shutil
    import tempfile

    shm = tempfile.mkdtemp(prefix=f"stockade-trash-{os.getpid()}-", dir="/dev/shm")
    try:
        env.trash = Path(shm)
        os.utime(env.ws / "dir" / "file.txt", (1_000_000_000, 1_000_000_000))
        os.utime(env.ws / "dir", (1_000_000_000, 1_000_000_000))
        out = call(env, "filesystem.delete", {"path": "dir", "recursive": True}, registry)
        assert not (env.ws / "dir").exists()
        assert (Path(shm) / out["trash_id"] / "item" / "file.txt").read_text() == "hello\nworld\n"
        call(env, "filesystem.restore", {"trash_id": out["trash_id"], "path": "dir"}, registry)
        assert (env.ws / "dir/file.txt").read_text() == "hello\nworld\n"
        assert os.readlink(env.ws / "dir/sneaky") == "../out/secret"
        assert os.listdir(shm) == []
        assert (env.ws / "dir/file.txt").stat().st_mtime == 1_000_000_000      # times survive the trip
        assert (env.ws / "dir").stat().st_mtime == 1_000_000_000
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_copy(env: Env, registry: Any, mode: str) -> None:
    out = call(env, "filesystem.copy", {"source": "dir/file.txt", "destination": "c/f"}, registry)
    assert out["files"] == 1 and out["bytes"] == 12 and (env.ws / "c/f").read_text() == "hello\nworld\n"
    fails(env, "filesystem.copy", {"source": "dir/file.txt", "destination": "c/f"}, ("InvalidInput",), registry)
    (env.ws / "dir/file.txt").write_text("v2")
    call(env, "filesystem.copy", {"source": "dir/file.txt", "destination": "c/f", "overwrite": True}, registry)
    assert (env.ws / "c/f").read_text() == "v2"
    fails(env, "filesystem.copy", {"source": "dir", "destination": "d2"}, ("InvalidInput",), registry)
    out = call(env, "filesystem.copy", {"source": "dir", "destination": "d2", "recursive": True}, registry)
    assert out["symlinks"] == 2 and (env.ws / "d2/file.txt").read_text() == "v2"
    assert os.readlink(env.ws / "d2/sneaky") == "../out/secret"          # copied as a link, not followed
    fails(env, "filesystem.read", {"path": "d2/sneaky"}, ("PathDenied",), registry)
    fails(env, "filesystem.copy", {"source": "dir", "destination": "dir/inner", "recursive": True},
          ("InvalidInput",), registry)
    fails(env, "filesystem.copy", {"source": "dir", "destination": "d2", "recursive": True},
          ("InvalidInput",), registry)
    os.mkfifo(env.ws / "dir" / "fifo")
    out = call(env, "filesystem.copy", {"source": "dir", "destination": "d3", "recursive": True}, registry)
    assert out["skipped"] == 1


# -- search ----------------------------------------------------------------------------------------------


def test_search(env: Env, registry: Any, mode: str) -> None:
    (env.ws / "src/pkg").mkdir(parents=True)
    for p in ("src/a.py", "src/pkg/b.py", "src/pkg/c.txt", "top.py", ".hidden.py"):
        (env.ws / p).write_text("x")
    names = lambda out: sorted(m["path"] for m in out["matches"])  # noqa: E731
    assert names(call(env, "filesystem.search", {"pattern": "*.py"}, registry)) == [
        "/workspace/src/a.py", "/workspace/src/pkg/b.py", "/workspace/top.py"]
    assert names(call(env, "filesystem.search", {"pattern": "src/**/*.py"}, registry)) == [
        "/workspace/src/a.py", "/workspace/src/pkg/b.py"]
    assert names(call(env, "filesystem.search", {"path": "src", "pattern": "pkg/*"}, registry)) == [
        "/workspace/src/pkg/b.py", "/workspace/src/pkg/c.txt"]
    assert "/workspace/.hidden.py" in names(call(env, "filesystem.search",
                                                 {"pattern": "*.py", "include_hidden": True}, registry))
    assert names(call(env, "filesystem.search", {"pattern": "secret"}, registry)) == []   # links not followed
    out = call(env, "filesystem.search", {"pattern": "*", "max_results": 2}, registry)
    assert out["count"] == 2 and out["truncated"]


def test_search_content(env: Env, registry: Any, mode: str) -> None:
    (env.ws / "code").mkdir()
    (env.ws / "code/a.py").write_text("import os\ndef Foo():\n    return 1\n")
    (env.ws / "code/b.txt").write_text("foo bar\n")
    (env.ws / "code/bin").write_bytes(b"foo\x00\x01")
    out = call(env, "filesystem.search_content", {"query": "foo", "case_sensitive": False}, registry)
    assert sorted((m["path"], m["line"]) for m in out["matches"]) == [
        ("/workspace/code/a.py", 2), ("/workspace/code/b.txt", 1)]
    assert out["skipped_binary"] == 1
    out = call(env, "filesystem.search_content", {"query": r"def \w+\(", "regex": True, "include": "*.py"}, registry)
    assert [m["text"] for m in out["matches"]] == ["def Foo():"]
    out = call(env, "filesystem.search_content", {"path": "code/b.txt", "query": "bar"}, registry)
    assert out["count"] == 1
    assert call(env, "filesystem.search_content", {"query": "TOP-SECRET"}, registry)["count"] == 0
    fails(env, "filesystem.search_content", {"query": "(", "regex": True}, ("InvalidInput",), registry)
    (env.ws / "many").write_text("hit\n" * 1000)
    out = call(env, "filesystem.search_content", {"query": "hit", "max_results": 5}, registry)
    assert out["count"] == 5 and out["truncated"]


# -- delete / restore --------------------------------------------------------------------------------------


def test_delete_and_restore(env: Env, registry: Any, mode: str) -> None:
    out = call(env, "filesystem.delete", {"path": "dir/file.txt"}, registry)
    assert not (env.ws / "dir/file.txt").exists()
    entry = env.trash / out["trash_id"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["original_path"] == "/workspace/dir/file.txt" and abs(meta["deleted_at"] - time.time()) < 60
    assert (entry / "item").read_text() == "hello\nworld\n"
    res = call(env, "filesystem.restore", {"path": "dir/file.txt"}, registry)
    assert res["trash_id"] == out["trash_id"] and (env.ws / "dir/file.txt").read_text() == "hello\nworld\n"
    assert not entry.exists()

    fails(env, "filesystem.delete", {"path": "dir"}, ("InvalidInput",), registry)      # not empty
    out = call(env, "filesystem.delete", {"path": "dir", "recursive": True}, registry)
    assert not (env.ws / "dir").exists()
    (env.ws / "dir").mkdir()
    fails(env, "filesystem.restore", {"trash_id": out["trash_id"], "path": "dir"}, ("InvalidInput",),
          registry)   # exists
    call(env, "filesystem.restore", {"trash_id": out["trash_id"], "path": "dir", "destination": "restored"},
         registry)
    assert (env.ws / "restored/file.txt").exists() and os.readlink(env.ws / "restored/sneaky") == "../out/secret"

    out = call(env, "filesystem.delete", {"path": "out"}, registry)                   # the link, not the target
    assert (env.outside / "secret").read_bytes() == SECRET and not os.path.lexists(env.ws / "out")
    fails(env, "filesystem.restore", {}, ("InvalidInput",), registry)             # path is required
    e = fails(env, "filesystem.restore", {}, ("InvalidInput",))                # the handler lists entries
    assert [a["original_path"] for a in e.data["available"]] == ["/workspace/out"]
    fails(env, "filesystem.delete", {"path": "."}, ("InvalidInput",), registry)
    fails(env, "filesystem.delete", {"path": "ghost"}, ("FileNotFound",), registry)
    fails(env, "filesystem.restore", {"trash_id": "1234567890-0123456789ab", "path": "out"}, ("FileNotFound",),
          registry)


def test_restore_of_the_latest_deletion(env: Env, registry: Any) -> None:
    (env.ws / "f").write_text("one")
    call(env, "filesystem.delete", {"path": "f"}, registry)
    (env.ws / "f").write_text("two")
    call(env, "filesystem.delete", {"path": "f"}, registry)
    call(env, "filesystem.restore", {"path": "f"}, registry)
    assert (env.ws / "f").read_text() == "two"


def _plant_entry(env: Env, tid: str, meta: dict[str, Any], content: bytes = b"payload") -> Path:
    e = env.trash / tid
    e.mkdir()
    (e / "meta.json").write_text(json.dumps(meta))
    (e / "item").write_bytes(content)
    return e


def test_trash_expiry(env: Env, registry: Any) -> None:
    old = time.time() - 8 * 24 * 3600
    stale = _plant_entry(env, f"{int(old)}-aaaaaaaaaaaa", {"original_path": "/workspace/old", "deleted_at": old})
    fresh_t = time.time() - 6 * 24 * 3600
    fresh = _plant_entry(env, f"{int(fresh_t)}-bbbbbbbbbbbb",
                         {"original_path": "/workspace/fresh", "deleted_at": fresh_t})
    orphan = env.trash / f"{int(old)}-cccccccccccc"
    orphan.mkdir()
    os.utime(orphan, (old, old))
    with pytest.raises(StockadeError) as ei:
        call(env, "filesystem.restore", {"path": "old"}, registry)
    assert ei.value.type == "FileNotFound"
    assert not stale.exists() and not orphan.exists() and fresh.exists()
    call(env, "filesystem.restore", {"path": "fresh"}, registry)
    assert (env.ws / "fresh").read_bytes() == b"payload"
    # An entry expires exactly after 7 days, judged by the injected clock too.
    (env.ws / "g").write_text("g")
    out = call(env, "filesystem.delete", {"path": "g"}, registry)
    ctx = env.ctx()
    ctx.extra["clock"] = lambda: time.time() + 7 * 24 * 3600 + 5
    assert fs.prune_trash(ctx) == 0 and not (env.trash / out["trash_id"]).exists()


def test_tampered_trash_metadata_cannot_write_outside(env: Env, registry: Any, mode: str) -> None:
    """The trash is writable from inside the sandbox: its metadata is untrusted input."""
    now = time.time()
    for i, orig in enumerate(["/etc/cron.d/evil", "/workspace/../outside/evil", "/workspace/out/evil",
                              "/workspace/a\x00b", "x" * 5000]):
        _plant_entry(env, f"{int(now)}-{i:012x}", {"original_path": orig, "deleted_at": now})
        tid = f"{int(now)}-{i:012x}"
        fails(env, "filesystem.restore", {"trash_id": tid, "path": orig}, ("PathDenied", "InvalidInput"))
        fails(env, "filesystem.restore", {"trash_id": tid, "path": "evil"}, ("FileNotFound",), registry)
    assert sorted(os.listdir(env.outside)) == ["secret"]
    _plant_entry(env, f"{int(now)}-ffffffffffff", {"original_path": 5, "deleted_at": "soon"})
    fails(env, "filesystem.restore", {"trash_id": f"{int(now)}-ffffffffffff", "path": "x"}, ("FileNotFound",),
          registry)


def test_walks_stop_before_the_sandbox_deadline(env: Env, registry: Any) -> None:
    """Near ctx.deadline, list/search/search_content return what they have (truncated)."""
    for i in range(50):
        (env.ws / f"f{i}").write_text("needle\n")
    ctx = env.ctx(timeout=5.0)
    ctx.deadline = time.monotonic() + 0.5          # inside the 1 s margin: time is up already
    assert fs.fs_list(ctx, {"recursive": True})["truncated"] is True
    assert fs.fs_search_content(ctx, {"query": "needle"})["truncated"] is True
    ctx.deadline = time.monotonic() + 60
    out = fs.fs_search_content(ctx, {"query": "needle"})
    assert out["count"] == 50 and not out["truncated"]


def test_no_fd_leaks(env: Env, mode: str) -> None:
    """Successful and failing calls alike close every fd they opened."""
    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    def once() -> None:
        call(env, "filesystem.write", {"path": "l/a", "content": "x"})
        call(env, "filesystem.read", {"path": "l/a"})
        call(env, "filesystem.list", {"recursive": True})
        call(env, "filesystem.search_content", {"query": "x"})
        call(env, "filesystem.copy", {"source": "l", "destination": "l2", "recursive": True})
        call(env, "filesystem.move", {"source": "l2", "destination": "l3"})
        out = call(env, "filesystem.delete", {"path": "l3", "recursive": True})
        call(env, "filesystem.restore", {"trash_id": out["trash_id"], "path": "l3", "destination": "l4"})
        call(env, "filesystem.delete", {"path": "l4", "recursive": True})
        for name, args in [("filesystem.read", {"path": "out/secret"}), ("filesystem.write", {"path": "dir",
                           "content": "x"}), ("filesystem.copy", {"source": "l", "destination": "l"}),
                           ("filesystem.delete", {"path": "ghost"}), ("filesystem.restore", {"path": "ghost"})]:
            with pytest.raises(StockadeError):
                call(env, name, args)

    once()
    before = count()
    for _ in range(3):
        once()
    assert count() == before


_COMPS = ["dir", "file.txt", "alias", "sneaky", "out", "abs_secret", "root", "magic", "loop1", "..", ".", "new",
          "secret", "outside", "etc", ""]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=hs.lists(hs.tuples(
    hs.sampled_from(["filesystem.write", "filesystem.append", "filesystem.mkdir", "filesystem.delete",
                     "filesystem.move", "filesystem.copy", "filesystem.read", "filesystem.list"]),
    hs.lists(hs.sampled_from(_COMPS), min_size=1, max_size=5).map("/".join),
    hs.lists(hs.sampled_from(_COMPS), min_size=1, max_size=5).map("/".join),
    hs.booleans()), min_size=1, max_size=6))
def test_random_operations_never_touch_outside(env: Env, mode: str, ops: list[tuple[str, str, str, bool]]) -> None:
    """Whatever sequence of calls an agent makes, nothing outside the workspace and trash changes."""
    outside_before = {k: v for k, v in env.snapshot().items() if not k.startswith(("ws", "trash"))}
    for name, p1, p2, flag in ops:
        args: dict[str, Any] = {
            "filesystem.write": {"path": p1, "content": "x"}, "filesystem.append": {"path": p1, "content": "x"},
            "filesystem.mkdir": {"path": p1}, "filesystem.delete": {"path": p1, "recursive": flag},
            "filesystem.move": {"source": p1, "destination": p2, "overwrite": flag},
            "filesystem.copy": {"source": p1, "destination": p2, "recursive": flag},
            "filesystem.read": {"path": p1}, "filesystem.list": {"path": p1, "recursive": flag},
        }[name]
        try:
            out = call(env, name, args)
        except StockadeError as e:
            assert e.type in ("InvalidInput", "PathDenied", "FileNotFound"), (name, args, e)
        else:
            assert "TOP-SECRET" not in json.dumps(out)
    after = {k: v for k, v in env.snapshot().items() if not k.startswith(("ws", "trash"))}
    assert after == outside_before


def test_too_deep_trees_fail_cleanly(env: Env, registry: Any) -> None:
    p = env.ws / "deep"
    for _ in range(fs.MAX_DEPTH + 3):
        p = p / "d"
    p.mkdir(parents=True)
    e = fails(env, "filesystem.copy", {"source": "deep", "destination": "deep2", "recursive": True},
              ("ResourceExhausted",), registry)
    assert e.data["resource"] == "depth"
    assert call(env, "filesystem.list", {"path": "deep", "recursive": True, "max_results": 10000},
                registry)["truncated"] is True
    assert call(env, "filesystem.list", {"path": "dir", "recursive": True}, registry)["truncated"] is False
    assert not [n for n in os.listdir(env.ws) if n.startswith(".stockade-")]
