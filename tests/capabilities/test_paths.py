"""The path core: parse() (pure) and the Resolver (openat2 and the O_NOFOLLOW walk).

The central property: no generated path, through any planted symlink, `..`, loop or magic link,
ever resolves to something outside the root. Each test runs with both resolution strategies.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from stockade.capabilities import paths
from stockade.capabilities.paths import Resolver, Root, Target, parse
from stockade.core.errors import StockadeError

from .conftest import SECRET, Env

# -- parse (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw,parts", [
    ("a/b.txt", ("a", "b.txt")),
    ("./a//b/", ("a", "b")),
    (".", ()),
    ("/workspace", ()),
    ("/workspace/", ()),
    ("//workspace//a/./b", ("a", "b")),
    ("~/x", ("~", "x")),
    ("a b/ü.txt", ("a b", "ü.txt")),
])
def test_parse_accepts(raw: str, parts: tuple[str, ...]) -> None:
    t = parse(raw)
    assert t == Target("/workspace", parts)
    assert t.display == "/workspace" + "".join("/" + p for p in parts)


@pytest.mark.parametrize("raw,type_", [
    ("..", "PathDenied"),
    ("a/../b", "PathDenied"),
    ("/workspace/../etc/passwd", "PathDenied"),
    ("/etc/passwd", "PathDenied"),
    ("/workspace2/x", "PathDenied"),
    ("/tmp/x", "PathDenied"),
    ("/", "PathDenied"),
    ("", "InvalidInput"),
    ("a\x00b", "InvalidInput"),
    ("a\nb", "InvalidInput"),
    ("a\x1b[31m", "InvalidInput"),
    ("\ud800", "InvalidInput"),
    ("a" * 5000, "InvalidInput"),
    ("x" * 256, "InvalidInput"),
    (None, "InvalidInput"),
    (["a"], "InvalidInput"),
    (7, "InvalidInput"),
])
def test_parse_refuses(raw: object, type_: str) -> None:
    with pytest.raises(StockadeError) as ei:
        parse(raw)
    assert ei.value.type == type_


def test_parse_other_roots() -> None:
    roots = ("/workspace", "/shared")
    assert parse("/shared/a", roots) == Target("/shared", ("a",))
    assert parse("a", roots) == Target("/workspace", ("a",))
    with pytest.raises(StockadeError):
        parse("/sharedx/a", roots)


@settings(max_examples=400, deadline=None)
@given(hs.lists(hs.sampled_from(["a", "/", ".", "..", "\x00", "\n", "workspace", "é", "*", "\\"]),
                max_size=40).map("".join) | hs.text(max_size=300))
def test_parse_never_yields_an_unsafe_target(raw: str) -> None:
    try:
        t = parse(raw)
    except StockadeError as e:
        assert e.type in ("InvalidInput", "PathDenied")
        return
    assert t.root == "/workspace"
    for p in t.parts:
        assert p not in ("", ".", "..")
        assert "/" not in p and "\x00" not in p
        assert len(p.encode()) <= 255
    assert t.display.startswith("/workspace")
    assert os.path.normpath(t.display) == t.display   # canonical: what policy conditions see


# -- glob_to_regex (pure) -------------------------------------------------------------------


@pytest.mark.parametrize("pattern,path,ok", [
    ("*.py", "a.py", True),
    ("*.py", "d/a.py", False),
    ("**/*.py", "a.py", True),
    ("**/*.py", "d/e/a.py", True),
    ("src/**", "src/a/b", True),
    ("src/**", "srcx/a", False),
    ("src/**/t_?.c", "src/x/y/t_1.c", True),
    ("src/**/t_?.c", "src/t_1.c", True),
    ("[!a]b", "cb", True),
    ("[!a]b", "ab", False),
    ("[!a]b", "/b", False),
    ("a?c", "a/c", False),
    ("[]x]", "]", True),
    ("a[", "a[", True),
])
def test_glob(pattern: str, path: str, ok: bool) -> None:
    assert (re.match(paths.glob_to_regex(pattern), path) is not None) is ok


@settings(max_examples=300, deadline=None)
@given(hs.text(alphabet="ab*?[]!^-.", max_size=12), hs.text(alphabet="ab.-[]!^", max_size=12))
def test_glob_matches_fnmatch_on_names(pattern: str, name: str) -> None:
    """Within one name (no '/', no '**') our globs mean what fnmatch means."""
    if "**" in pattern:
        return
    try:
        expected = fnmatch.fnmatchcase(name, pattern)
    except re.error:
        return
    assert (re.match(paths.glob_to_regex(pattern), name) is not None) == expected


# -- the resolver -----------------------------------------------------------------------------

COMPONENTS = ["dir", "file.txt", "alias", "sneaky", "out", "abs_secret", "root", "magic", "loop1",
              "..", ".", "secret", "outside", "nothere", "etc", "passwd", "ws"]


def _is_inside(fd: int, root: Path) -> bool:
    real = paths.fd_path(fd)
    r = str(root.resolve())
    return real == r or real.startswith(r + "/")


def _open(res: Resolver, parts: list[str], flags: int) -> tuple[int, int] | str:
    try:
        fd = res.open_raw(res.root_fd("/workspace"), tuple(parts), flags)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, "?")
    try:
        s = os.fstat(fd)
        return (s.st_dev, s.st_ino)
    finally:
        os.close(fd)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=hs.lists(hs.sampled_from(COMPONENTS), min_size=0, max_size=7),
       follow=hs.booleans(), kind=hs.sampled_from(["path", "read", "dir"]))
def test_no_path_resolves_outside(env: Env, parts: list[str], follow: bool, kind: str) -> None:
    flags = {"path": os.O_PATH, "read": os.O_RDONLY | os.O_NONBLOCK, "dir": os.O_RDONLY | os.O_DIRECTORY}[kind]
    results = {}
    for use in (True, False):
        if use and not paths.openat2_available():
            continue
        res = Resolver([Root("/workspace", str(env.ws), True)], use_openat2=use)
        try:
            try:
                fd = res.open_raw(res.root_fd("/workspace"), tuple(parts), flags, follow=follow)
            except OSError as e:
                assert e.errno in (errno.ENOENT, errno.EXDEV, errno.ELOOP, errno.ENOTDIR, errno.EISDIR), e
                results[use] = "error"
                continue
            try:
                assert _is_inside(fd, env.ws), (parts, paths.fd_path(fd))
                if kind == "read" and os.path.isfile(paths.fd_path(fd)):
                    assert os.read(fd, 100) != SECRET
                s = os.fstat(fd)
                results[use] = (s.st_dev, s.st_ino)
            finally:
                os.close(fd)
        finally:
            res.close()
    if len(results) == 2:
        # Both strategies agree on what exists (error kinds may differ: EXDEV vs ELOOP).
        assert results[True] == results[False], (parts, follow, kind, results)


def test_planted_symlinks(env: Env, mode: str) -> None:
    res = Resolver([Root("/workspace", str(env.ws), True)])
    t = parse
    for bad in ["out/secret", "abs_secret", "root/etc/passwd", "magic/etc/passwd", "dir/sneaky", "loop1"]:
        with pytest.raises(StockadeError) as ei:
            res.open(t(bad), os.O_RDONLY)
        assert ei.value.type == "PathDenied", bad
    fd = res.open(t("dir/alias"), os.O_RDONLY)       # a link that stays inside is fine
    assert os.read(fd, 100) == b"hello\nworld\n"
    os.close(fd)
    fd = res.open(t("out"), os.O_PATH, follow=False)   # the link itself, not its target
    assert paths.fd_path(fd) == str(env.ws / "out")
    os.close(fd)
    res.close()


def test_creation_through_a_dangling_link_cannot_escape(env: Env, mode: str) -> None:
    os.symlink("../outside/created", env.ws / "dangling")
    res = Resolver([Root("/workspace", str(env.ws), True)])
    with pytest.raises(StockadeError) as ei:
        res.open(parse("dangling"), os.O_WRONLY | os.O_CREAT, 0o644)
    assert ei.value.type == "PathDenied"
    assert not (env.outside / "created").exists()
    with pytest.raises(StockadeError):
        res.makedirs(parse("out/newdir"))
    assert not (env.outside / "newdir").exists()
    res.close()


def test_walk_splices_relative_links_like_the_kernel(env: Env) -> None:
    (env.ws / "dir" / "sub").mkdir()
    os.symlink("../file.txt", env.ws / "dir" / "sub" / "up")   # ../ inside the root: fine
    os.symlink("dir/sub/../../dir", env.ws / "back")
    for use in ([True] if paths.openat2_available() else []) + [False]:
        res = Resolver([Root("/workspace", str(env.ws), True)], use_openat2=use)
        for p in ("dir/sub/up", "back/file.txt", "back/sub/up"):
            fd = res.open(parse(p), os.O_RDONLY)
            assert os.read(fd, 5) == b"hello", (use, p)
            os.close(fd)
        res.close()


def test_symlink_swap_race_never_reads_outside(env: Env, mode: str) -> None:
    """A thread keeps swapping ws/x between a real directory and a symlink to outside."""
    (env.ws / "x_dir").mkdir()
    (env.ws / "x_dir" / "secret").write_bytes(b"inside\n")
    os.symlink(str(env.outside), env.ws / "x_link")
    os.symlink(str(env.outside), env.ws / "x_link2")
    stop = threading.Event()

    def flipper() -> None:
        wsfd = os.open(env.ws, os.O_PATH | os.O_DIRECTORY)
        try:
            while not stop.is_set():
                os.rename("x_dir", "x", src_dir_fd=wsfd, dst_dir_fd=wsfd)
                os.rename("x", "x_dir", src_dir_fd=wsfd, dst_dir_fd=wsfd)
                os.rename("x_link2", "x", src_dir_fd=wsfd, dst_dir_fd=wsfd)
                os.rename("x", "x_link2", src_dir_fd=wsfd, dst_dir_fd=wsfd)
        finally:
            os.close(wsfd)

    th = threading.Thread(target=flipper, daemon=True)
    th.start()
    res = Resolver([Root("/workspace", str(env.ws), True)])
    seen_inside = naive_leaks = 0
    try:
        for _ in range(3000):
            try:
                fd = res.open(parse("x/secret"), os.O_RDONLY)
            except StockadeError as e:
                assert e.type in ("PathDenied", "FileNotFound")
            else:
                data = os.read(fd, 100)
                os.close(fd)
                assert data != SECRET
                seen_inside += data == b"inside\n"
            # Control: the naive open (path join, kernel follows links) does leak in this race,
            # so this test would fail if the resolver were replaced by it.
            try:
                with open(env.ws / "x" / "secret", "rb") as f:
                    naive_leaks += f.read() == SECRET
            except OSError:
                pass
    finally:
        stop.set()
        th.join()
        res.close()
    assert naive_leaks > 0
    assert seen_inside > 0


def test_resolver_survives_root_fd_moves(env: Env, mode: str) -> None:
    """A directory renamed out from under a walk never lets `..` climb above the root."""
    (env.ws / "a" / "b").mkdir(parents=True)
    os.symlink("../../..", env.ws / "a" / "b" / "up3")
    res = Resolver([Root("/workspace", str(env.ws), True)])
    with pytest.raises(StockadeError) as ei:
        res.open(parse("a/b/up3/outside/secret"), os.O_RDONLY)
    assert ei.value.type == "PathDenied"
    res.close()


def test_makedirs_and_open_parent(env: Env, mode: str) -> None:
    res = Resolver([Root("/workspace", str(env.ws), True)])
    assert res.makedirs(parse("n1/n2/n3")) is True
    assert res.makedirs(parse("n1/n2/n3")) is False
    fd, name = res.open_parent(parse("n1/n2/n3/f"))
    assert name == "f" and paths.fd_path(fd) == str(env.ws / "n1/n2/n3")
    os.close(fd)
    with pytest.raises(StockadeError):
        res.open_parent(parse("."))
    res.close()


def test_os_error_mapping() -> None:
    cases = {errno.ENOENT: "FileNotFound", errno.EXDEV: "PathDenied", errno.ELOOP: "PathDenied",
             errno.EACCES: "PathDenied", errno.EROFS: "PathWriteProtected", errno.ENOSPC: "ResourceExhausted",
             errno.EEXIST: "InvalidInput", errno.ENOTEMPTY: "InvalidInput", errno.EIO: "Internal"}
    for code, type_ in cases.items():
        assert paths.os_error(OSError(code, os.strerror(code)), "/workspace/x").type == type_
