"""Agent-supplied paths -> file descriptors that are provably inside a root.

Two halves (functional core, imperative shell):

* `parse(path, roots)` is pure: it validates the string an agent sent (type, size, NUL and
  control characters, `..`) and turns it into a `Target` (root name + clean components). It
  never touches the filesystem, so the policy engine and the tests can use it freely.
* `Resolver` opens a `Target` relative to a directory fd of its root with
  `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: the kernel resolves every component,
  symlinks included, and refuses (EXDEV/ELOOP) any step that would leave the root. Where
  openat2 is missing (or denied by seccomp) a user-space walk gives the same answer: each
  component is opened with `O_NOFOLLOW` relative to the fd of the previous one, symlinks are
  read with `readlinkat` and spliced into the remaining path, and `..` pops the walk's own fd
  stack (never the kernel's `..`), so nothing above the root is ever reachable.

Callers then operate on the returned fds (`*at` syscalls with a single-component name), so
there is no window between the check and the use.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import re
import stat as st
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stockade.core.errors import StockadeError, err

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_SYMLINKS = 40          # the kernel's own limit (MAXSYMLINKS)
WORKSPACE = "/workspace"

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())
_RENAME_NOREPLACE = 1

_RECOVER_PATH = [{"action": "use_workspace_path",
                  "description": "Use a path relative to /workspace (or absolute under /workspace) "
                                 "without '..' and without symlinks that point outside it."}]


# -- pure core ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A validated path: `root` is the sandbox-view root ("/workspace"), `parts` clean names."""

    root: str
    parts: tuple[str, ...]

    @property
    def display(self) -> str:
        """The canonical sandbox-view path, e.g. "/workspace/src/a.py"."""
        return "/".join((self.root, *self.parts)) if self.parts else self.root

    @property
    def rel(self) -> str:
        return "/".join(self.parts) if self.parts else "."

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else ""

    @property
    def is_root(self) -> bool:
        return not self.parts

    def parent(self) -> Target:
        return Target(self.root, self.parts[:-1])

    def child(self, name: str) -> Target:
        return Target(self.root, (*self.parts, name))


def _bad(message: str, path: Any, type_: str = "InvalidInput") -> StockadeError:
    shown = path if isinstance(path, str) and len(path) <= 300 else None
    return err(type_, message, _RECOVER_PATH if type_ == "PathDenied" else None,
               **({"path": shown} if shown is not None else {}))


def check_name(name: str) -> None:
    """A single directory-entry name an agent supplied (or we read back)."""
    if not name or name in (".", "..") or "/" in name:
        raise _bad(f"invalid file name {name[:100]!r}", name)
    _check_chars(name, name)


def _check_chars(s: str, path: Any) -> None:
    if "\x00" in s:
        raise _bad("paths must not contain NUL bytes", None)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        raise _bad("paths must not contain control characters", None)
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad("paths must be valid Unicode (no lone surrogates)", None) from None
    if len(b) > MAX_PATH_BYTES:
        raise _bad(f"path longer than {MAX_PATH_BYTES} bytes", None)


def parse(path: Any, roots: tuple[str, ...] = (WORKSPACE,), default_root: str = WORKSPACE) -> Target:
    """Validate an agent-supplied path; pure.

    Relative paths are relative to `default_root`; absolute ones must lie under one of `roots`.
    `..` is refused outright (lexical `..` disagrees with the kernel's when a symlink precedes
    it, and policy conditions must see the same path the operation uses). Raises InvalidInput
    (malformed) or PathDenied (outside every root).
    """
    if not isinstance(path, str):
        raise _bad("path must be a string", None)
    if path == "":
        raise _bad("path is empty (use '.' for the workspace itself)", path)
    _check_chars(path, path)
    comps = [c for c in path.split("/") if c not in ("", ".")]
    for c in comps:
        if c == "..":
            raise _bad("'..' is not allowed in paths", path, "PathDenied")
        if len(c.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _bad(f"a path component is longer than {MAX_COMPONENT_BYTES} bytes", path)
    if not path.startswith("/"):
        return Target(default_root, tuple(comps))
    for r in roots:
        rparts = [c for c in r.split("/") if c]
        if comps[: len(rparts)] == rparts:
            return Target(r, tuple(comps[len(rparts):]))
    allowed = ", ".join(roots)
    raise _bad(f"{path[:200]} is outside the directories you may use ({allowed})", path, "PathDenied")


def _glob_class(pat: str, i: int) -> tuple[str, int]:
    """`[...]` starting after the '[' at i-1 -> (regex, index after it); fnmatch's rules, minus '/'."""
    n = len(pat)
    j = i
    if j < n and pat[j] == "!":
        j += 1
    if j < n and pat[j] == "]":
        j += 1
    while j < n and pat[j] != "]":
        j += 1
    if j >= n:
        return "\\[", i
    stuff = pat[i:j]
    if "-" not in stuff:
        stuff = stuff.replace("\\", "\\\\")
    else:
        chunks = []
        k = i + 2 if pat[i] == "!" else i + 1
        while True:
            k = pat.find("-", k, j)
            if k < 0:
                break
            chunks.append(pat[i:k])
            i = k + 1
            k = k + 3
        chunk = pat[i:j]
        if chunk:
            chunks.append(chunk)
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):   # drop empty (reversed) ranges: invalid in re
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
        stuff = "-".join(c.replace("\\", "\\\\").replace("-", "\\-") for c in chunks)
    stuff = re.sub(r"([&~|])", r"\\\1", stuff)
    if not stuff:
        return "(?!)", j + 1
    if stuff == "!":
        return "[^/]", j + 1
    if stuff[0] == "!":
        rest = stuff[1:]
        if rest.startswith("]"):
            rest = "\\" + rest
        return f"[^/{rest}]", j + 1
    if stuff[0] in ("^", "["):
        stuff = "\\" + stuff
    return f"(?!/)[{stuff}]", j + 1


def glob_to_regex(pattern: str) -> str:
    """Pure: a glob (`*`, `?`, `[...]`, `**`) -> a regex over '/'-separated relative paths.

    `*` and `?` never cross '/'; `**/` matches zero or more directories and a trailing `**`
    everything below. No backtracking blow-up: the output only uses `[^/]*`, `.*` and classes.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                j = i + 2
                at_start = i == 0 or pattern[i - 1] == "/"
                if at_start and j < n and pattern[j] == "/":
                    out.append("(?:.*/)?")
                    i = j + 1
                    continue
                if at_start and j == n:
                    out.append(".*")
                    i = j
                    continue
                out.append("[^/]*")
                while i < n and pattern[i] == "*":
                    i += 1
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            rx, i = _glob_class(pattern, i + 1)
            out.append(rx)
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "(?s:" + "".join(out) + r")\Z"


# -- openat2 / renameat2 via ctypes ---------------------------------------------------------
class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_renameat2: Any   # None without glibc's renameat2
try:
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
except AttributeError:  # pragma: no cover - glibc < 2.28
    _renameat2 = None


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """The raw syscall; raises OSError like os.open."""
    if _SYS_OPENAT2 is None:
        raise OSError(errno.ENOSYS, "openat2 not available on this architecture")
    creates = bool(flags & os.O_CREAT) or (flags & os.O_TMPFILE) == os.O_TMPFILE
    how = _OpenHow(flags | os.O_CLOEXEC, mode if creates else 0, resolve)
    b = os.fsencode(path)
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(b),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return int(fd)


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): fails with EEXIST instead of replacing (atomic check)."""
    if _renameat2 is None:  # pragma: no cover
        raise OSError(errno.ENOSYS, "renameat2 unavailable")
    if _renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dst)


_OPENAT2_OK: bool | None = None


def openat2_available() -> bool:
    """Probe once: ENOSYS (old kernel) or EPERM (seccomp) means use the user-space walk."""
    global _OPENAT2_OK
    if _OPENAT2_OK is None:
        try:
            os.close(openat2(-100, "/", os.O_PATH | os.O_DIRECTORY, 0, RESOLVE_NO_MAGICLINKS))
            _OPENAT2_OK = True
        except OSError:
            _OPENAT2_OK = False
    return _OPENAT2_OK


# -- errno -> structured error ---------------------------------------------------------------
def os_error(e: OSError, display: str, what: str = "") -> StockadeError:
    """Map an OSError from an operation on `display` to a stable error type."""
    code = e.errno
    p = display
    w = f"{what}: " if what else ""
    if code == errno.ENOENT:
        return err("FileNotFound", f"{w}{p} does not exist", path=p)
    if code in (errno.EXDEV, errno.ELOOP):
        return err("PathDenied", f"{w}{p} resolves outside the allowed directory (symlink) or loops",
                   _RECOVER_PATH, path=p)
    if code == errno.ENOTDIR:
        return err("FileNotFound", f"{w}a component of {p} is not a directory", path=p)
    if code in (errno.EACCES, errno.EPERM):
        return err("PathDenied", f"{w}permission denied for {p}", path=p)
    if code == errno.EROFS:
        return err("PathWriteProtected", f"{w}{p} is on a read-only filesystem", path=p)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return err("ResourceExhausted", f"{w}no space left for {p}", resource="disk", path=p)
    if code == errno.EMFILE or code == errno.ENFILE:
        return err("ResourceExhausted", f"{w}too many open files", resource="files", path=p)
    if code == errno.ENOMEM:
        return err("ResourceExhausted", f"{w}out of memory", resource="memory", path=p)
    if code == errno.EEXIST:
        return err("InvalidInput", f"{w}{p} already exists", path=p, reason="exists")
    if code == errno.ENOTEMPTY:
        return err("InvalidInput", f"{w}{p} is a non-empty directory", path=p, reason="not_empty")
    if code == errno.EISDIR:
        return err("InvalidInput", f"{w}{p} is a directory", path=p, reason="is_directory")
    if code == errno.ENAMETOOLONG:
        return err("InvalidInput", f"{w}path too long", path=p)
    if code in (errno.ENXIO, errno.ETXTBSY, errno.EBUSY):
        return err("InvalidInput", f"{w}{p} is busy or not a regular file", path=p)
    if code == errno.EINVAL:
        return err("InvalidInput", f"{w}invalid operation on {p}", path=p)
    if code == errno.EFBIG:
        return err("ResourceExhausted", f"{w}{p} would be too large", resource="disk", path=p)
    return err("Internal", f"{w}{os.strerror(code or 0)} ({errno.errorcode.get(code or 0, code)}) on {p}",
               path=p)


# -- the resolver (imperative shell) --------------------------------------------------------
@dataclass(frozen=True)
class Root:
    name: str          # sandbox-view name, "/workspace"
    host: str          # where it is in this process's view (equal inside the sandbox)
    writable: bool


class Resolver:
    """Opens Targets beneath their root's directory fd. Use as a context manager."""

    def __init__(self, roots: list[Root], *, use_openat2: bool | None = None):
        self.roots = {r.name: r for r in roots}
        self.use_openat2 = openat2_available() if use_openat2 is None else use_openat2
        self._fds: dict[str, int] = {}

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    @property
    def root_names(self) -> tuple[str, ...]:
        return tuple(self.roots)

    def parse(self, path: Any, *, write: bool = False) -> Target:
        t = parse(path, self.root_names)
        if write and not self.roots[t.root].writable:
            raise err("PathWriteProtected", f"{t.display} is read-only", path=t.display)
        return t

    def root_fd(self, root: str) -> int:
        fd = self._fds.get(root)
        if fd is None:
            r = self.roots[root]
            try:
                fd = os.open(r.host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise err("Internal", f"{root} is not available in this sandbox ({e.strerror})") from None
            self._fds[root] = fd
        return fd

    # Every open goes through here.
    def open(self, t: Target, flags: int, mode: int = 0o644, *, follow: bool = True) -> int:
        """Open `t` beneath its root. `follow=False` opens a final symlink itself (or fails
        with ELOOP for non-O_PATH flags). Raises StockadeError."""
        try:
            return self.open_raw(self.root_fd(t.root), t.parts, flags, mode, follow=follow)
        except OSError as e:
            raise os_error(e, t.display) from None

    def open_raw(self, rootfd: int, parts: tuple[str, ...], flags: int, mode: int = 0o644, *,
                 follow: bool = True) -> int:
        # openat2 rejects O_PATH combined with anything but O_DIRECTORY/O_NOFOLLOW/O_CLOEXEC.
        flags |= os.O_CLOEXEC if flags & os.O_PATH else os.O_CLOEXEC | os.O_NOCTTY
        if not follow:
            flags |= os.O_NOFOLLOW
        if self.use_openat2:
            path = "/".join(parts) if parts else "."
            for _ in range(64):
                try:
                    return openat2(rootfd, path, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
                except OSError as e:
                    if e.errno != errno.EAGAIN:  # a concurrent rename near `..`: retry
                        raise
            raise OSError(errno.EAGAIN, "path kept changing during resolution")
        return _walk(rootfd, list(parts), flags, mode)

    def open_parent(self, t: Target, *, create: bool = False) -> tuple[int, str]:
        """(fd of t's parent directory, t's final name). `create` makes missing parents."""
        if t.is_root:
            raise err("InvalidInput", f"{t.display} itself cannot be used here", path=t.display)
        parent = t.parent()
        if create:
            self.makedirs(parent)
        return self.open(parent, os.O_PATH | os.O_DIRECTORY), t.name

    def makedirs(self, t: Target, mode: int = 0o777) -> bool:   # less the umask or the default ACL
        """mkdir -p beneath the root; returns True if the last component was created."""
        created = False
        rootfd = self.root_fd(t.root)
        for i in range(len(t.parts)):
            sub = Target(t.root, t.parts[: i + 1])
            try:
                os.close(self.open_raw(rootfd, sub.parts, os.O_PATH | os.O_DIRECTORY))
                created = False
                continue
            except OSError as e:
                if e.errno == errno.ENOTDIR:   # the parents were just checked: this one is a file
                    raise err("InvalidInput", f"{sub.display} exists and is not a directory",
                              path=sub.display, reason="not_directory") from None
                if e.errno != errno.ENOENT:
                    raise os_error(e, sub.display) from None
            pfd = self.open(sub.parent(), os.O_PATH | os.O_DIRECTORY)
            try:
                os.mkdir(sub.name, mode, dir_fd=pfd)
                created = True
            except FileExistsError:
                created = False   # a racing creator, or a dangling symlink (caught next step)
            except OSError as e:
                raise os_error(e, sub.display) from None
            finally:
                os.close(pfd)
            try:
                os.close(self.open_raw(rootfd, sub.parts, os.O_PATH | os.O_DIRECTORY))
            except OSError as e:
                raise os_error(e, sub.display) from None
        return created


def _walk(rootfd: int, parts: list[str], flags: int, mode: int) -> int:
    """User-space RESOLVE_BENEATH: O_NOFOLLOW step by step, symlinks spliced, `..` by fd stack."""
    stack = [os.dup(rootfd)]
    todo = list(reversed(parts))     # pop() gives the next component
    links = 0
    nofollow_final = bool(flags & os.O_NOFOLLOW)
    try:
        while True:
            if not todo:
                # The path (after symlink splicing) ended at a directory already on the stack.
                return _reopen(stack[-1], flags)
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if len(stack) == 1:
                    raise OSError(errno.EXDEV, "path escapes the root")
                os.close(stack.pop())
                continue
            last = not todo
            dirfd = stack[-1]
            try:
                if last:
                    fd = os.open(comp, flags | os.O_NOFOLLOW, mode, dir_fd=dirfd)
                    if flags & os.O_PATH and not nofollow_final and st.S_ISLNK(os.fstat(fd).st_mode):
                        os.close(fd)
                        raise OSError(errno.ELOOP, "symlink")
                    return fd
                fd = os.open(comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                stack.append(fd)
                continue
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST) or (last and nofollow_final):
                    raise
                try:
                    target = os.readlink(comp, dir_fd=dirfd)
                except OSError as e2:
                    if e2.errno == errno.EINVAL:   # not a symlink after all (ENOTDIR on a file)
                        raise e from None
                    raise
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many symlinks") from None
                if target.startswith("/") or "\x00" in target:
                    raise OSError(errno.EXDEV, "absolute symlink leaves the root") from None
                if last and flags & os.O_CREAT and flags & os.O_EXCL:
                    raise OSError(errno.EEXIST, "exists") from None
                todo.extend(reversed(target.split("/")))
    finally:
        for fd in stack:
            os.close(fd)


def _reopen(dirfd: int, flags: int) -> int:
    """Open the directory the walk ended on with the caller's flags."""
    if flags & os.O_CREAT and flags & os.O_EXCL:
        raise OSError(errno.EEXIST, "exists")
    if flags & (os.O_WRONLY | os.O_RDWR):
        raise OSError(errno.EISDIR, "is a directory")
    if flags & os.O_PATH:
        return os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    return os.open(".", flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW), dir_fd=dirfd)


def fd_path(fd: int) -> str:
    """Where an fd really points (tests and diagnostics only; needs /proc)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def iter_dir(dirfd: int) -> Iterator[os.DirEntry[str]]:
    """Entries of an O_RDONLY directory fd, sorted by name (deterministic output)."""
    with os.scandir(dirfd) as it:
        yield from sorted(it, key=lambda e: e.name)
