"""Landlock through raw syscalls (ctypes): filesystem, TCP ports and scoping, best ABI available.

Small on purpose (the research notes rule out the alpha PyPI packages). Rules are inode based,
so they are added *after* pivot_root, on the new root's paths (a fresh /proc or /tmp is a
different inode from the host's).
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass

from stockade.sandbox import libc

# Filesystem access rights and the ABI that introduced them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13        # ABI 2
TRUNCATE = 1 << 14     # ABI 3
IOCTL_DEV = 1 << 15    # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_FS_ABI1 = (1 << 13) - 1
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def abi_version() -> int:
    """0 when Landlock is absent or disabled."""
    try:
        return libc.syscall("landlock_create_ruleset", None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    except OSError:
        return 0


def handled_fs(abi: int) -> int:
    """Pure: every filesystem right the given ABI knows."""
    if abi <= 0:
        return 0
    m = _FS_ABI1
    if abi >= 2:
        m |= REFER
    if abi >= 3:
        m |= TRUNCATE
    if abi >= 5:
        m |= IOCTL_DEV
    return m


def handled_net(abi: int) -> int:
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0


def scopes(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0


RO = READ_FILE | READ_DIR
RX = RO | EXECUTE
RW = (_FS_ABI1 & ~(MAKE_CHAR | MAKE_BLOCK)) | REFER | TRUNCATE


@dataclass(frozen=True)
class Spec:
    """What the sandbox is allowed: path -> rights, TCP connect ports. Pure data."""

    paths: tuple[tuple[str, int], ...]
    connect_ports: tuple[int, ...] = ()


def create(spec: Spec, abi: int, prefix: str = "") -> int:
    """A ruleset fd for `spec` (masked to `abi`), paths resolved under `prefix`.

    Rules hold inodes. Landlock walks up through mounts but skips the (hidden) mount-point
    dentry itself, so a rule on the template's /tmp directory does not cover the tmpfs a call
    mounts there: rules for per-call mounts must be made on the mounted roots, i.e. in the child
    after pivot_root. A missing path is skipped.
    """
    fs = handled_fs(abi)
    attr = _RulesetAttr(fs, handled_net(abi), scopes(abi))
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
    rfd = libc.syscall("landlock_create_ruleset", ctypes.addressof(attr), size, 0)
    try:
        for path, rights in spec.paths:
            try:
                fd = os.open(prefix + path if prefix else path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                allowed = rights & fs
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    allowed &= FILE_RIGHTS
                rule = _PathBeneath(allowed, fd)
                libc.syscall("landlock_add_rule", rfd, RULE_PATH_BENEATH, ctypes.addressof(rule), 0)
            finally:
                os.close(fd)
        if abi >= 4:
            for port in spec.connect_ports:
                net = _NetPort(NET_CONNECT_TCP, port)
                libc.syscall("landlock_add_rule", rfd, RULE_NET_PORT, ctypes.addressof(net), 0)
    except BaseException:
        os.close(rfd)
        raise
    return rfd


def restrict_fd(rfd: int) -> None:
    """Restrict this process with a prepared ruleset (needs no_new_privs)."""
    libc.syscall("landlock_restrict_self", rfd, 0)


def restrict(spec: Spec, abi: int) -> None:
    """Build a ruleset for `spec` and restrict this process with it."""
    rfd = create(spec, abi)
    try:
        restrict_fd(rfd)
    finally:
        os.close(rfd)
