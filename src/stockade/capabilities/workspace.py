"""Agent workspaces outside the data home (issue 18): the checks a configured path must pass, and
the POSIX ACLs that let both the agent's sandbox uid and the owner's own account read and write
what is there and what gets created later (default ACLs are inherited whatever the umask).

`check` is pure apart from `lstat`/`realpath`; `acl_xattr` is a pure encoder of the kernel's
`system.posix_acl_*` format; `grant` applies them (the sandbox executor calls it, once per path).
"""

from __future__ import annotations

import os
import pwd
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stockade.core.errors import err

# Places a workspace may never be (or contain): binding them as /workspace would hand the agent
# the system. The data home is checked separately, in both directions.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run",
               "/sbin", "/sys", "/usr", "/var/lib", "/var/log", "/var/run", "/home", "/srv", "/opt", "/var", "/tmp",
               "/mnt", "/media")
STRICT_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run",
               "/sbin", "/sys", "/usr", "/var/lib", "/var/log")      # never inside, never above
MAX_GRANT = 200_000          # entries walked when granting an existing tree (a repository, not a disk)

# posix_acl_xattr: little-endian header version 2, then (tag u16, perm u16, id u32) sorted by tag, id.
ACL_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF


@dataclass(frozen=True)
class Checked:
    path: Path
    warnings: tuple[str, ...]


def _under(p: Path, base: Path) -> bool:
    return p == base or base in p.parents


def check(path: str, home_root: Path) -> Checked:
    """A configured workspace: absolute, existing, a real directory (no symlink anywhere), not /, not
    a system directory or a parent of one, not inside the data home and not containing it.
    Refusals are SandboxUnavailable (the call cannot run), warnings are for the owner."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise err("SandboxUnavailable", f"workspace {path!r}: must be an absolute path")
    p = Path(os.path.normpath(path))
    real = Path(os.path.realpath(p))
    if real != p:
        raise err("SandboxUnavailable", f"workspace {path}: a symlink is on the way ({real}); name the real directory")
    try:
        st = os.lstat(p)
    except OSError as e:
        raise err("SandboxUnavailable", f"workspace {path}: {e.strerror} (create it first)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise err("SandboxUnavailable", f"workspace {path}: not a directory")
    home = Path(os.path.realpath(home_root))
    if str(p) in SYSTEM_DIRS or p == Path("/"):
        raise err("SandboxUnavailable", f"workspace {path}: a system directory; use a directory of its own")
    for d in map(Path, STRICT_DIRS):
        if _under(p, d) or _under(d, p):
            raise err("SandboxUnavailable", f"workspace {path}: inside or above the system directory {d}")
    if _under(p, home) or _under(home, p):
        raise err("SandboxUnavailable", f"workspace {path}: inside the data home or containing it ({home})")
    warnings = []
    if st.st_mode & stat.S_IWOTH:
        warnings.append(f"workspace {path} is world-writable: any local user can change what the agent reads")
    if st.st_uid == 0:
        warnings.append(f"workspace {path} is owned by root: set sandbox.workspace_owner to the account that "
                        "reviews the agent's work")
    if (p / ".git").is_dir():
        warnings.append(f"workspace {path} is a git repository: the agent can rewrite its history and hooks "
                        "(.git/hooks run as whoever runs git there next)")
    return Checked(p, tuple(warnings))


def owner_uid(owner: str | int | None, path: Path) -> int | None:
    """The account that reviews the agent's work: the configured name or uid, else the
    directory's owner unless that is root (root needs no ACL)."""
    if owner is None:
        uid = os.lstat(path).st_uid
        return uid or None
    if isinstance(owner, int):
        return owner
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise err("SandboxUnavailable", f"workspace_owner {owner!r}: no such user on this machine") from None


def acl_xattr(users: Iterable[int], perm: int = 7, mode: int = 0o700) -> bytes:
    """The `system.posix_acl_access`/`_default` value: the owning user, group and others keep the
    bits `mode` gives them, each uid in `users` gets `perm` (rwx bits), and the mask lets both
    through (pure)."""
    u, g, o = (mode >> 6) & 7, (mode >> 3) & 7, mode & 7
    entries = [(USER_OBJ, u, UNDEFINED_ID)]
    entries += [(USER, perm, int(x)) for x in sorted(set(users))]
    entries += [(GROUP_OBJ, g, UNDEFINED_ID), (MASK, perm | g, UNDEFINED_ID), (OTHER, o, UNDEFINED_ID)]
    return struct.pack("<I", ACL_VERSION) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


def grant(root: Path, users: Iterable[int]) -> int:
    """Give `users` read/write (and search on directories, execute where the owner has it) on
    everything under `root`, and the same by default on whatever is created there later. Modes
    of the owning user, group and others are kept. Symlinks are never followed. Returns the number
    of entries changed; OSError when the filesystem has no POSIX ACLs."""
    uids = sorted(set(users))
    n = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        m = os.lstat(dirpath).st_mode & 0o777
        os.setxattr(dirpath, "system.posix_acl_access", acl_xattr(uids, 7, m), follow_symlinks=False)
        os.setxattr(dirpath, "system.posix_acl_default", acl_xattr(uids, 7, m | 0o700), follow_symlinks=False)
        n += 1
        for name in filenames:
            fp = os.path.join(dirpath, name)
            st = os.lstat(fp)
            if stat.S_ISREG(st.st_mode):
                fm = st.st_mode & 0o777
                os.setxattr(fp, "system.posix_acl_access", acl_xattr(uids, 7 if fm & 0o100 else 6, fm),
                            follow_symlinks=False)
                n += 1
        if n > MAX_GRANT:
            raise err("SandboxUnavailable", f"workspace {root}: more than {MAX_GRANT} entries; point the agent "
                      "at a smaller directory")
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return n
