"""filesystem.*: workspace files, run inside the per-call sandbox.

Every path goes through `stockade.capabilities.paths` (parse, then open beneath the root fd with
openat2 RESOLVE_BENEATH or an O_NOFOLLOW walk) and every operation after that is an `*at` call
on the resolved directory fd with a single-component name, so a symlink planted by the agent
(or swapped in concurrently by one of its processes) can never redirect it outside the root.
The roots come from `ctx` (`/workspace` rw, `/shared` ro, `/trash` for delete/restore), so the
same code runs against tmp directories in the unit tests.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import errno
import json
import os
import re
import secrets
import stat as st
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from stockade.capabilities import paths
from stockade.capabilities.paths import Resolver, Root, Target, os_error
from stockade.capabilities.registry import implements
from stockade.core.errors import StockadeError, err

TRASH_RETENTION_S = 7 * 24 * 3600
READ_DEFAULT_BYTES = 1024 * 1024
WRITE_MAX_BYTES = 8 * 1024 * 1024
LIST_DEFAULT = 1000
LIST_MAX = 10_000
SEARCH_CONTENT_DEFAULT = 200
SEARCH_CONTENT_MAX = 5000
SEARCH_FILE_MAX_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_DIR_ENTRIES = 100_000
MAX_COPY_ENTRIES = 100_000
LINE_MAX_CHARS = 400
TRASH_ID = re.compile(r"^[0-9]{10,12}-[0-9a-f]{12}$")
_TMP_PREFIX = ".stockade-"
_CHUNK = 1024 * 1024


# -- helpers --------------------------------------------------------------------------------
def _profile(ctx: Any, name: str, default: Any) -> Any:
    prof = getattr(ctx, "profile", None)
    if isinstance(prof, dict):
        return prof.get(name, default)
    return getattr(prof, name, default) if prof is not None else default


def _time_is_up(ctx: Any) -> bool:
    """True shortly before the sandbox's deadline: long walks stop and report `truncated`
    instead of being killed with nothing to show."""
    deadline = getattr(ctx, "deadline", 0.0) or 0.0
    if not deadline:
        return False
    margin = min(1.0, 0.2 * float(_profile(ctx, "timeout", 30.0)))
    return time.monotonic() > deadline - margin


def _output_budget(ctx: Any) -> int:
    """Bytes the encoded result may take (the sandbox refuses bigger ones); keep headroom."""
    return max(4096, int(_profile(ctx, "max_output_bytes", 1024 * 1024)) - 2048)


def resolver(ctx: Any, *, use_openat2: bool | None = None) -> Resolver:
    roots = [Root("/workspace", ctx.workspace, True)]
    shared = getattr(ctx, "shared", None)
    if shared and os.path.isdir(shared):
        roots.append(Root("/shared", shared, False))
    return Resolver(roots, use_openat2=use_openat2)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _kind(mode: int) -> str:
    if st.S_ISREG(mode):
        return "file"
    if st.S_ISDIR(mode):
        return "directory"
    if st.S_ISLNK(mode):
        return "symlink"
    return "other"


def _decode_content(args: dict[str, Any]) -> bytes:
    content = args.get("content")
    if not isinstance(content, str):
        raise err("InvalidInput", "content must be a string")
    enc = args.get("encoding", "utf-8")
    if enc == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise err("InvalidInput", "content is not valid base64") from None
    elif enc == "utf-8":
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError:
            raise err("InvalidInput", "content is not valid Unicode (lone surrogates)") from None
    else:
        raise err("InvalidInput", "encoding must be utf-8 or base64")
    if len(data) > WRITE_MAX_BYTES:
        raise err("InvalidInput", f"content larger than {WRITE_MAX_BYTES} bytes", size=len(data))
    return data


def _write_all(fd: int, data: bytes, display: str) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view[:_CHUNK])
            view = view[n:]
    except OSError as e:
        raise os_error(e, display, "write") from None


def _tmp_name(name: str) -> str:
    return f"{_TMP_PREFIX}{secrets.token_hex(6)}.tmp"


def _lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _rename(sdir: int, sname: str, ddir: int, dname: str, overwrite: bool) -> None:
    if overwrite:
        os.rename(sname, dname, src_dir_fd=sdir, dst_dir_fd=ddir)
    else:
        paths.rename_noreplace(sdir, sname, ddir, dname)


def _unlink_quiet(dirfd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        _remove_tree(dirfd, name)


# -- tree operations on fds (never follow symlinks) -----------------------------------------
def _remove_tree(dirfd: int, name: str, depth: int = 0) -> None:
    """rm -rf of one entry of `dirfd`; symlinks are removed, never followed."""
    s = _lstat_at(dirfd, name)
    if s is None:
        return
    if not st.S_ISDIR(s.st_mode):
        os.unlink(name, dir_fd=dirfd)
        return
    if depth > MAX_DEPTH * 4:
        raise err("ResourceExhausted", "directory tree too deep to copy or remove", resource="depth")
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        while True:
            with os.scandir(fd) as it:
                names = [e.name for _, e in zip(range(4096), it, strict=False)]
            if not names:
                break
            for n in names:
                _remove_tree(fd, n, depth + 1)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


class _CopyStats:
    def __init__(self) -> None:
        self.files = 0
        self.directories = 0
        self.symlinks = 0
        self.bytes = 0
        self.skipped = 0
        self.entries = 0
        self.created: set[tuple[int, int]] = set()
        self.keep_times = False     # moves across mounts keep mtimes (delete/restore round trips)


def _copy_fd(src: int, dst: int, stats: _CopyStats) -> None:
    while True:
        chunk = os.read(src, _CHUNK)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            n = os.write(dst, view)
            view = view[n:]
        stats.bytes += len(chunk)


def _copy_file_from_fd(srcfd: int, ddir: int, dname: str, mode: int, stats: _CopyStats) -> None:
    out = os.open(dname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  mode & 0o777, dir_fd=ddir)
    try:
        _copy_fd(srcfd, out, stats)
        os.fchmod(out, mode & 0o777)
        if stats.keep_times:
            src = os.fstat(srcfd)
            os.utime(out, ns=(src.st_atime_ns, src.st_mtime_ns))
    finally:
        os.close(out)
    stats.files += 1


def _copy_dir_from_fd(srcfd: int, ddir: int, dname: str, mode: int, stats: _CopyStats, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise err("ResourceExhausted", "directory tree too deep to copy or remove", resource="depth")
    os.mkdir(dname, 0o700, dir_fd=ddir)
    dfd = os.open(dname, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=ddir)
    try:
        ds = os.fstat(dfd)
        stats.created.add((ds.st_dev, ds.st_ino))
        stats.directories += 1
        for e in paths.iter_dir(srcfd):
            _copy_entry(srcfd, e.name, dfd, e.name, stats, depth + 1)
        os.fchmod(dfd, mode & 0o777)
        if stats.keep_times:
            src = os.fstat(srcfd)
            os.utime(dfd, ns=(src.st_atime_ns, src.st_mtime_ns))
    finally:
        os.close(dfd)


def _copy_entry(sdir: int, sname: str, ddir: int, dname: str, stats: _CopyStats, depth: int) -> None:
    """Copy one entry (recursively); symlinks are recreated as symlinks, not followed."""
    stats.entries += 1
    if stats.entries > MAX_COPY_ENTRIES:
        raise err("ResourceExhausted", f"more than {MAX_COPY_ENTRIES} entries to copy", resource="entries")
    s = _lstat_at(sdir, sname)
    if s is None:
        return
    if (s.st_dev, s.st_ino) in stats.created:
        return  # the copy we are creating inside the source itself
    if st.S_ISLNK(s.st_mode):
        os.symlink(os.readlink(sname, dir_fd=sdir), dname, dir_fd=ddir)
        stats.symlinks += 1
        if stats.keep_times:
            os.utime(dname, ns=(s.st_atime_ns, s.st_mtime_ns), dir_fd=ddir, follow_symlinks=False)
    elif st.S_ISREG(s.st_mode):
        fd = os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sdir)
        try:
            _copy_file_from_fd(fd, ddir, dname, os.fstat(fd).st_mode, stats)
        finally:
            os.close(fd)
    elif st.S_ISDIR(s.st_mode):
        fd = os.open(sname, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sdir)
        try:
            _copy_dir_from_fd(fd, ddir, dname, s.st_mode, stats, depth)
        finally:
            os.close(fd)
    else:
        stats.skipped += 1


def _move_entry(sdir: int, sname: str, ddir: int, dname: str, overwrite: bool) -> None:
    """rename; across mounts (EXDEV) copy to a temp name, rename into place, remove the source."""
    try:
        _rename(sdir, sname, ddir, dname, overwrite)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    tmp = _tmp_name(dname)
    stats = _CopyStats()
    stats.keep_times = True
    try:
        _copy_entry(sdir, sname, ddir, tmp, stats, 0)
        _rename(ddir, tmp, ddir, dname, overwrite)
    except BaseException:
        _unlink_quiet(ddir, tmp)
        raise
    _remove_tree(sdir, sname)


# -- walking (list, search, search_content) -------------------------------------------------
def _walk(fd: int, base: tuple[str, ...], *, recursive: bool, include_hidden: bool,
          max_depth: int = MAX_DEPTH, cut: list[bool] | None = None
          ) -> Iterator[tuple[tuple[str, ...], os.stat_result]]:
    """Pre-order walk of an O_RDONLY dir fd, sorted, without following symlinks.

    Directories deeper than `max_depth` are not entered; `cut` (if given) is set to [True] then.
    """
    for _dfd, _name, parts, s in _walk_fds(fd, base, recursive=recursive, include_hidden=include_hidden,
                                          max_depth=max_depth, cut=cut):
        yield parts, s


def _walk_fds(fd: int, base: tuple[str, ...], *, recursive: bool, include_hidden: bool,
              max_depth: int = MAX_DEPTH, cut: list[bool] | None = None
              ) -> Iterator[tuple[int, str, tuple[str, ...], os.stat_result]]:
    """The one directory walker: (parent dir fd, name, parts, lstat), the fd open while yielded.

    Every directory is entered with openat(O_NOFOLLOW) from its parent's fd, so a symlink swapped
    in during the walk is never followed out of the tree."""
    first = os.dup(fd)
    stack: list[tuple[int, tuple[str, ...], Iterator[os.DirEntry[str]]]] = []
    try:
        stack.append((first, base, iter(_entries(first))))
        while stack:
            dfd, parts, it = stack[-1]
            e = next(it, None)
            if e is None:
                os.close(dfd)
                stack.pop()
                continue
            if not include_hidden and e.name.startswith("."):
                continue
            try:
                s = e.stat(follow_symlinks=False)
            except OSError:
                continue
            p = (*parts, e.name)
            yield dfd, e.name, p, s
            if recursive and st.S_ISDIR(s.st_mode) and len(stack) >= max_depth and cut is not None:
                cut[:] = [True]
            if recursive and st.S_ISDIR(s.st_mode) and len(stack) < max_depth:
                try:
                    cfd = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except OSError:
                    continue
                stack.append((cfd, p, iter(_entries(cfd))))
    finally:
        for dfd, _, _ in stack:
            with contextlib.suppress(OSError):
                os.close(dfd)


def _entries(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as it:
        out = [e for _, e in zip(range(MAX_DIR_ENTRIES), it, strict=False)]
    out.sort(key=lambda e: e.name)
    return out


def _open_dir(res: Resolver, t: Target) -> int:
    fd = res.open(t, os.O_RDONLY | os.O_NONBLOCK)
    if not st.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise err("InvalidInput", f"{t.display} is not a directory", path=t.display, reason="not_directory")
    return fd


def _entry(t: Target, parts: tuple[str, ...], s: os.stat_result) -> dict[str, Any]:
    tt = Target(t.root, parts)
    return {"name": tt.name, "path": tt.display, "type": _kind(s.st_mode), "size": s.st_size,
            "modified": _iso(s.st_mtime)}


def _max_results(args: dict[str, Any], default: int, cap: int) -> int:
    n = args.get("max_results", default)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise err("InvalidInput", "max_results must be a positive integer")
    return min(n, cap)


# -- capabilities ---------------------------------------------------------------------------
@implements("filesystem.read")
def fs_read(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    enc = args.get("encoding", "utf-8")
    offset = int(args.get("offset", 0))
    budget = _output_budget(ctx)
    limit = min(int(args.get("max_bytes", READ_DEFAULT_BYTES)),
                budget * 3 // 4 - 1024 if enc == "base64" else budget // 2)
    if offset < 0 or limit < 1:
        raise err("InvalidInput", "offset must be >= 0 and max_bytes >= 1")
    with resolver(ctx) as res:
        t = res.parse(args.get("path"))
        fd = res.open(t, os.O_RDONLY | os.O_NONBLOCK)
        try:
            s = os.fstat(fd)
            if st.S_ISDIR(s.st_mode):
                raise err("InvalidInput", f"{t.display} is a directory; use filesystem.list",
                          path=t.display, reason="is_directory")
            if not st.S_ISREG(s.st_mode):
                raise err("InvalidInput", f"{t.display} is not a regular file", path=t.display)
            try:
                data = os.pread(fd, limit + 1, offset)
            except OSError as e:
                raise os_error(e, t.display, "read") from None
        finally:
            os.close(fd)
    truncated = len(data) > limit
    data = data[:limit]
    if enc == "base64":
        content = base64.b64encode(data).decode("ascii")
    else:
        dec = codecs.getincrementaldecoder("utf-8")()
        try:
            content = dec.decode(data, final=not truncated)
        except UnicodeDecodeError:
            raise err("InvalidInput", f"{t.display} is not valid UTF-8 text; read it with encoding: base64",
                      [{"action": "use_base64", "description": "Call filesystem.read again with encoding: base64."}],
                      path=t.display, reason="not_utf8") from None
        data = data[: len(data) - len(dec.getstate()[0])]   # drop a split multi-byte tail
        # JSON escapes can grow text (control characters become \\u00XX): trim to the budget.
        while len(json.dumps(content)) > budget - 1024 and content:
            content = content[: len(content) * 3 // 4]
            data = content.encode("utf-8")
            truncated = True
    return {"path": t.display, "content": content, "encoding": enc, "size": s.st_size, "offset": offset,
            "bytes_read": len(data), "truncated": truncated or offset + len(data) < s.st_size,
            "modified": _iso(s.st_mtime)}


@implements("filesystem.write")
def fs_write(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    data = _decode_content(args)
    overwrite = bool(args.get("overwrite", True))
    with resolver(ctx) as res:
        t = res.parse(args.get("path"), write=True)
        dirfd, name = res.open_parent(t, create=bool(args.get("parents", True)))
        try:
            old = _lstat_at(dirfd, name)
            if old is not None and st.S_ISDIR(old.st_mode):
                raise err("InvalidInput", f"{t.display} is a directory", path=t.display, reason="is_directory")
            if old is not None and not overwrite:
                raise err("InvalidInput", f"{t.display} already exists (overwrite: false)", path=t.display,
                          reason="exists")
            # A new file gets 0o666 less the umask, or, in a shared workspace, what the directory's
            # default ACL says (the owner's account keeps rw): never an explicit chmod (issue 18).
            keep = old is not None and st.S_ISREG(old.st_mode)
            mode = (old.st_mode & 0o777) if keep and old is not None else 0o666
            tmp = _tmp_name(name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             mode, dir_fd=dirfd)
            except OSError as e:
                raise os_error(e, t.display, "create") from None
            try:
                try:
                    _write_all(fd, data, t.display)
                    if keep:
                        os.fchmod(fd, mode)
                finally:
                    os.close(fd)
                # Atomic replace of the directory entry (a symlink there is replaced, not followed).
                _rename(dirfd, tmp, dirfd, name, overwrite)
            except OSError as e:
                _unlink_quiet(dirfd, tmp)
                raise os_error(e, t.display, "write") from None
            except BaseException:
                _unlink_quiet(dirfd, tmp)
                raise
        finally:
            os.close(dirfd)
    return {"path": t.display, "size": len(data), "created": old is None}


@implements("filesystem.append")
def fs_append(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    data = _decode_content(args)
    with resolver(ctx) as res:
        t = res.parse(args.get("path"), write=True)
        if t.is_root:
            raise err("InvalidInput", f"{t.display} is a directory", path=t.display, reason="is_directory")
        if args.get("parents", True):
            res.makedirs(t.parent())
        fd = res.open(t, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
        try:
            s = os.fstat(fd)
            if not st.S_ISREG(s.st_mode):
                raise err("InvalidInput", f"{t.display} is not a regular file", path=t.display)
            _write_all(fd, data, t.display)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    return {"path": t.display, "appended": len(data), "size": size}


@implements("filesystem.list")
def fs_list(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    max_results = _max_results(args, LIST_DEFAULT, LIST_MAX)
    budget = _output_budget(ctx) - 512
    out: list[dict[str, Any]] = []
    truncated = False
    cut: list[bool] = []
    used = 0
    with resolver(ctx) as res:
        t = res.parse(args.get("path", "."))
        fd = _open_dir(res, t)
        try:
            for parts, s in _walk(fd, t.parts, recursive=bool(args.get("recursive", False)),
                                  include_hidden=bool(args.get("include_hidden", True)), cut=cut):
                e = _entry(t, parts, s)
                cost = len(json.dumps(e)) + 2
                if len(out) >= max_results or used + cost > budget or _time_is_up(ctx):
                    truncated = True
                    break
                used += cost
                out.append(e)
        finally:
            os.close(fd)
    return {"path": t.display, "entries": out, "count": len(out), "truncated": truncated or bool(cut)}


@implements("filesystem.stat")
def fs_stat(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    follow = bool(args.get("follow_symlinks", False))
    with resolver(ctx) as res:
        t = res.parse(args.get("path"))
        try:
            fd = res.open(t, os.O_PATH, follow=follow)
        except StockadeError as e:
            if e.type == "FileNotFound":
                return {"path": t.display, "exists": False}
            raise
        try:
            s = os.fstat(fd)
            target = None
            if st.S_ISLNK(s.st_mode):
                with contextlib.suppress(OSError):
                    target = os.readlink("", dir_fd=fd)
        finally:
            os.close(fd)
    out: dict[str, Any] = {"path": t.display, "exists": True, "type": _kind(s.st_mode), "size": s.st_size,
                           "mode": f"{st.S_IMODE(s.st_mode):04o}", "modified": _iso(s.st_mtime),
                           "accessed": _iso(s.st_atime), "changed": _iso(s.st_ctime), "links": s.st_nlink}
    if target is not None:
        out["link_target"] = target[:4096]
    return out


@implements("filesystem.mkdir")
def fs_mkdir(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    with resolver(ctx) as res:
        t = res.parse(args.get("path"), write=True)
        if t.is_root:
            return {"path": t.display, "created": False}
        if args.get("parents", True):
            created = res.makedirs(t)
        else:
            dirfd, name = res.open_parent(t)
            try:
                os.mkdir(name, 0o777, dir_fd=dirfd)  # less the umask or the default ACL
                created = True
            except FileExistsError:
                created = False
            except OSError as e:
                raise os_error(e, t.display, "mkdir") from None
            finally:
                os.close(dirfd)
        if not created:
            fd = res.open(t, os.O_PATH)
            try:
                if not st.S_ISDIR(os.fstat(fd).st_mode):
                    raise err("InvalidInput", f"{t.display} exists and is not a directory", path=t.display,
                              reason="exists")
            finally:
                os.close(fd)
    return {"path": t.display, "created": created}


def _two(res: Resolver, args: dict[str, Any], *, source_write: bool) -> tuple[Target, Target]:
    src = res.parse(args.get("source"), write=source_write)
    dst = res.parse(args.get("destination"), write=True)
    if src.is_root or dst.is_root:
        raise err("InvalidInput", "source and destination must name entries inside the root, not the root itself")
    if src.root == dst.root and dst.parts[: len(src.parts)] == src.parts:
        raise err("InvalidInput", f"cannot put {src.display} inside itself ({dst.display})")
    return src, dst


@implements("filesystem.move")
def fs_move(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    overwrite = bool(args.get("overwrite", False))
    with resolver(ctx) as res:
        src, dst = _two(res, args, source_write=True)
        sdir, sname = res.open_parent(src)
        try:
            if _lstat_at(sdir, sname) is None:
                raise err("FileNotFound", f"{src.display} does not exist", path=src.display)
            ddir, dname = res.open_parent(dst, create=True)
            try:
                _move_entry(sdir, sname, ddir, dname, overwrite)
            except OSError as e:
                raise os_error(e, dst.display if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR)
                               else src.display, "move") from None
            finally:
                os.close(ddir)
        finally:
            os.close(sdir)
    return {"source": src.display, "destination": dst.display}


@implements("filesystem.copy")
def fs_copy(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    overwrite = bool(args.get("overwrite", False))
    recursive = bool(args.get("recursive", False))
    stats = _CopyStats()
    with resolver(ctx) as res:
        src, dst = _two(res, args, source_write=False)
        sfd = res.open(src, os.O_RDONLY | os.O_NONBLOCK)
        try:
            s = os.fstat(sfd)
            is_dir = st.S_ISDIR(s.st_mode)
            if is_dir and not recursive:
                raise err("InvalidInput", f"{src.display} is a directory; pass recursive: true",
                          path=src.display, reason="is_directory")
            if not is_dir and not st.S_ISREG(s.st_mode):
                raise err("InvalidInput", f"{src.display} is not a regular file", path=src.display)
            ddir, dname = res.open_parent(dst, create=True)
            tmp = _tmp_name(dname)
            try:
                old = _lstat_at(ddir, dname)
                if old is not None and (is_dir or not overwrite):
                    raise err("InvalidInput", f"{dst.display} already exists"
                              + ("" if is_dir else " (overwrite: false)"), path=dst.display, reason="exists")
                if old is not None and st.S_ISDIR(old.st_mode):
                    raise err("InvalidInput", f"{dst.display} is a directory", path=dst.display,
                              reason="is_directory")
                if is_dir:
                    _copy_dir_from_fd(sfd, ddir, tmp, s.st_mode, stats, 0)
                else:
                    _copy_file_from_fd(sfd, ddir, tmp, s.st_mode, stats)
                _rename(ddir, tmp, ddir, dname, overwrite and not is_dir)
            except OSError as e:
                _unlink_quiet(ddir, tmp)
                raise os_error(e, dst.display, "copy") from None
            except BaseException:
                _unlink_quiet(ddir, tmp)
                raise
            finally:
                os.close(ddir)
        finally:
            os.close(sfd)
    return {"source": src.display, "destination": dst.display, "files": stats.files,
            "directories": stats.directories, "symlinks": stats.symlinks, "bytes": stats.bytes,
            "skipped": stats.skipped}


def _search_regex(args: dict[str, Any], key: str) -> re.Pattern[str] | None:
    pat = args.get(key)
    if pat is None:
        return None
    if not isinstance(pat, str) or not pat or "\x00" in pat:
        raise err("InvalidInput", f"{key} must be a non-empty glob")
    return re.compile(paths.glob_to_regex(pat))


def _matcher(rx: re.Pattern[str], pattern: str) -> Any:
    """Globs without '/' match the file name at any depth; others the path below the base."""
    if "/" in pattern.rstrip("/"):
        return lambda rel, name: rx.match(rel) is not None
    return lambda rel, name: rx.match(name) is not None


@implements("filesystem.search")
def fs_search(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    max_results = _max_results(args, LIST_DEFAULT, LIST_MAX)
    rx = _search_regex(args, "pattern")
    assert rx is not None
    match = _matcher(rx, args["pattern"])
    budget = _output_budget(ctx) - 512
    out: list[dict[str, Any]] = []
    truncated = False
    used = 0
    scanned = 0
    cut: list[bool] = []
    with resolver(ctx) as res:
        t = res.parse(args.get("path", "."))
        fd = _open_dir(res, t)
        try:
            for parts, s in _walk(fd, t.parts, recursive=True,
                                  include_hidden=bool(args.get("include_hidden", False)), cut=cut):
                scanned += 1
                if scanned % 256 == 0 and _time_is_up(ctx):
                    truncated = True
                    break
                if not match("/".join(parts[len(t.parts):]), parts[-1]):
                    continue
                e = _entry(t, parts, s)
                cost = len(json.dumps(e)) + 2
                if len(out) >= max_results or used + cost > budget:
                    truncated = True
                    break
                used += cost
                out.append(e)
        finally:
            os.close(fd)
    return {"path": t.display, "pattern": args["pattern"], "matches": out, "count": len(out),
            "scanned": scanned, "truncated": truncated or bool(cut)}


@implements("filesystem.search_content")
def fs_search_content(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    max_results = _max_results(args, SEARCH_CONTENT_DEFAULT, SEARCH_CONTENT_MAX)
    query = args.get("query")
    if not isinstance(query, str) or not query:
        raise err("InvalidInput", "query must be a non-empty string")
    flags = 0 if args.get("case_sensitive", True) else re.IGNORECASE
    try:
        rx = re.compile(query if args.get("regex", False) else re.escape(query), flags)
    except re.error as e:
        raise err("InvalidInput", f"query is not a valid regular expression: {e}") from None
    inc = _search_regex(args, "include")
    inc_match = _matcher(inc, args["include"]) if inc is not None else None
    budget = _output_budget(ctx) - 1024
    out: list[dict[str, Any]] = []
    truncated = False
    used = 0
    files = skipped_binary = skipped_large = 0
    with resolver(ctx) as res:
        t = res.parse(args.get("path", "."))
        top = res.open(t, os.O_RDONLY | os.O_NONBLOCK)
        try:
            ts = os.fstat(top)
            if st.S_ISREG(ts.st_mode):
                candidates: Iterator[tuple[int, str, tuple[str, ...], os.stat_result | None]] = \
                    iter([(top, "", t.parts, ts)])
            elif st.S_ISDIR(ts.st_mode):
                candidates = _content_files(top, t, bool(args.get("include_hidden", False)), inc_match)
            else:
                raise err("InvalidInput", f"{t.display} is not a file or directory", path=t.display)
            for dfd, name, parts, _s in candidates:
                if _time_is_up(ctx):
                    truncated = True
                    break
                try:
                    fd = os.dup(dfd) if not name else \
                        os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
                except OSError:
                    continue
                try:
                    fs = os.fstat(fd)
                    if not st.S_ISREG(fs.st_mode):
                        continue
                    if fs.st_size > SEARCH_FILE_MAX_BYTES:
                        skipped_large += 1
                        continue
                    data = os.pread(fd, SEARCH_FILE_MAX_BYTES, 0)
                finally:
                    os.close(fd)
                if b"\x00" in data[:8192]:
                    skipped_binary += 1
                    continue
                files += 1
                display = Target(t.root, parts).display
                for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                    if not rx.search(line):
                        continue
                    hit = {"path": display, "line": lineno, "text": line[:LINE_MAX_CHARS]}
                    cost = len(json.dumps(hit)) + 2
                    if len(out) >= max_results or used + cost > budget:
                        truncated = True
                        break
                    used += cost
                    out.append(hit)
                if truncated:
                    break
        finally:
            os.close(top)
    return {"path": t.display, "query": query, "matches": out, "count": len(out), "files_scanned": files,
            "skipped_binary": skipped_binary, "skipped_large": skipped_large, "truncated": truncated}


def _content_files(top: int, t: Target, include_hidden: bool,
                   inc_match: Any) -> Iterator[tuple[int, str, tuple[str, ...], os.stat_result | None]]:
    """Regular files below `top`: (dir fd, name, parts, stat); dir fds stay open while yielded."""
    for dfd, name, p, s in _walk_fds(top, t.parts, recursive=True, include_hidden=include_hidden):
        if not st.S_ISREG(s.st_mode):
            continue
        if inc_match is not None and not inc_match("/".join(p[len(t.parts):]), name):
            continue
        yield dfd, name, p, s


# -- trash: delete / restore ------------------------------------------------------------------
def _now(ctx: Any) -> float:
    clock = getattr(ctx, "extra", {}).get("clock") if isinstance(getattr(ctx, "extra", None), dict) else None
    return float(clock()) if callable(clock) else time.time()


def _trash_fd(ctx: Any) -> int:
    trash = getattr(ctx, "trash", None)
    if not trash:
        raise err("Internal", "no trash directory in this sandbox")
    try:
        return os.open(trash, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise err("Internal", f"the trash directory is not available ({e.strerror})") from None


def _read_meta(tfd: int, entry: str) -> dict[str, Any] | None:
    """Metadata is untrusted (the agent could have written it): parse defensively."""
    try:
        efd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tfd)
    except OSError:
        return None
    try:
        fd = os.open("meta.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=efd)
        try:
            raw = os.read(fd, 65536)
        finally:
            os.close(fd)
        meta = json.loads(raw)
        if not isinstance(meta, dict) or not isinstance(meta.get("original_path"), str) \
                or not isinstance(meta.get("deleted_at"), (int, float)):
            return None
        return meta
    except (OSError, ValueError):
        return None
    finally:
        os.close(efd)


def _trash_entries(tfd: int, now: float) -> list[tuple[str, dict[str, Any]]]:
    """Live entries (id, meta); expired or orphaned ones are pruned on the way."""
    live = []
    for e in paths.iter_dir(tfd):
        if not TRASH_ID.match(e.name):
            continue
        meta = _read_meta(tfd, e.name)
        if meta is None:
            try:
                age = now - e.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if age > TRASH_RETENTION_S:
                _unlink_quiet(tfd, e.name)
            continue
        if now - float(meta["deleted_at"]) > TRASH_RETENTION_S:
            _unlink_quiet(tfd, e.name)
            continue
        live.append((e.name, meta))
    return live


def _summary(tid: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {"trash_id": tid, "original_path": meta["original_path"][:4200], "type": str(meta.get("type", ""))[:20],
            "deleted_at": _iso(float(meta["deleted_at"])),
            "restorable_until": _iso(float(meta["deleted_at"]) + TRASH_RETENTION_S)}


def prune_trash(ctx: Any) -> int:
    """Remove expired trash entries; returns how many are left (also run on delete/restore)."""
    tfd = _trash_fd(ctx)
    try:
        return len(_trash_entries(tfd, _now(ctx)))
    finally:
        os.close(tfd)


@implements("filesystem.delete")
def fs_delete(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    recursive = bool(args.get("recursive", False))
    now = _now(ctx)
    with resolver(ctx) as res:
        t = res.parse(args.get("path"), write=True)
        if t.is_root:
            raise err("InvalidInput", f"{t.display} itself cannot be deleted", path=t.display)
        dirfd, name = res.open_parent(t)
        try:
            tfd = _trash_fd(ctx)
        except BaseException:
            os.close(dirfd)
            raise
        try:
            s = _lstat_at(dirfd, name)
            if s is None:
                raise err("FileNotFound", f"{t.display} does not exist", path=t.display)
            if st.S_ISDIR(s.st_mode) and not recursive:
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                try:
                    with os.scandir(dfd) as it:
                        nonempty = next(it, None) is not None
                finally:
                    os.close(dfd)
                if nonempty:
                    raise err("InvalidInput", f"{t.display} is a non-empty directory; pass recursive: true",
                              path=t.display, reason="not_empty")
            _trash_entries(tfd, now)   # prune expired ones first
            tid = f"{int(now):010d}-{secrets.token_hex(6)}"
            os.mkdir(tid, 0o700, dir_fd=tfd)
            efd = os.open(tid, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tfd)
            try:
                meta = {"version": 1, "original_path": t.display, "deleted_at": now, "type": _kind(s.st_mode),
                        "size": s.st_size, "call_id": str(getattr(ctx, "call_id", ""))[:64]}
                mfd = os.open("meta.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600, dir_fd=efd)
                try:
                    _write_all(mfd, json.dumps(meta).encode(), "trash metadata")
                finally:
                    os.close(mfd)
                try:
                    _move_entry(dirfd, name, efd, "item", False)
                except BaseException:
                    os.close(efd)
                    efd = -1
                    _unlink_quiet(tfd, tid)
                    raise
            finally:
                if efd >= 0:
                    os.close(efd)
        except OSError as e:
            raise os_error(e, t.display, "delete") from None
        finally:
            os.close(tfd)
            os.close(dirfd)
    return {"path": t.display, **_summary(tid, meta)}


@implements("filesystem.restore")
def fs_restore(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    tid = args.get("trash_id")
    overwrite = bool(args.get("overwrite", False))
    now = _now(ctx)
    with resolver(ctx) as res:
        want = res.parse(args["path"]) if args.get("path") is not None else None
        tfd = _trash_fd(ctx)
        try:
            live = _trash_entries(tfd, now)
            if want is None:
                raise err("InvalidInput", "give path (the original path of a deleted entry), optionally trash_id",
                          available=[_summary(i, m) for i, m in sorted(live, key=lambda x: x[1]["deleted_at"],
                                                                        reverse=True)[:50]])
            cand = [(i, m) for i, m in live if (tid is None or i == tid)
                    and (want is None or m["original_path"] == want.display)]
            if not cand:
                raise err("FileNotFound", "nothing in the trash matches (entries expire after 7 days)",
                          trash_id=tid, path=want.display if want else None,
                          available=[_summary(i, m) for i, m in live[:50]])
            tid, meta = max(cand, key=lambda x: float(x[1]["deleted_at"]))
            dest_arg = args.get("destination") or meta["original_path"]
            dst = res.parse(dest_arg, write=True)   # metadata is untrusted: same checks as any path
            if dst.is_root:
                raise err("InvalidInput", "cannot restore over the root itself")
            ddir, dname = res.open_parent(dst, create=True)
            try:
                efd = os.open(tid, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tfd)
                try:
                    if _lstat_at(efd, "item") is None:
                        raise err("FileNotFound", f"trash entry {tid} is empty", trash_id=tid)
                    _move_entry(efd, "item", ddir, dname, overwrite)
                finally:
                    os.close(efd)
            except OSError as e:
                raise os_error(e, dst.display, "restore") from None
            finally:
                os.close(ddir)
            _unlink_quiet(tfd, tid)
        finally:
            os.close(tfd)
    return {"path": dst.display, "trash_id": tid, "original_path": meta["original_path"][:4200], "restored": True}
