"""Thin ctypes wrappers for the syscalls the sandbox child needs (x86_64 / aarch64 numbers).

Python 3.11 has no os.unshare/os.setns/mount/pivot_root; these raise OSError like os.* does.
"""

from __future__ import annotations

import ctypes
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

ARCH = platform.machine()
_NR = {
    "x86_64": {"clone": 56, "pivot_root": 155, "close_range": 436, "landlock_create_ruleset": 444,
               "landlock_add_rule": 445, "landlock_restrict_self": 446, "seccomp": 317,
               "capset": 126, "setns": 308, "unshare": 272},
    "aarch64": {"clone": 220, "pivot_root": 41, "close_range": 436, "landlock_create_ruleset": 444,
                "landlock_add_rule": 445, "landlock_restrict_self": 446, "seccomp": 277,
                "capset": 91, "setns": 268, "unshare": 97},
}[ARCH]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def _check(r: int) -> int:
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def syscall(name: str, *args: int | bytes | ctypes.c_void_p | None) -> int:
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(_syscall(ctypes.c_long(_NR[name]), *conv))


def clone_fork(flags: int) -> int:
    """fork() through the raw clone syscall, with namespace flags (e.g. CLONE_NEWPID).

    Unlike os.fork it runs no at-fork hooks (about half a millisecond in a loaded interpreter).
    Only for a single-threaded caller whose child does not rely on Python's after-fork state
    (threading bookkeeping, `random` reseeding) or on glibc's cached thread id (raise()).
    """
    return _check(_syscall(ctypes.c_long(_NR["clone"]), ctypes.c_long(flags | 17), ctypes.c_long(0),
                           ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0)))


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None))


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)))


def pivot_root(new_root: str, put_old: str) -> None:
    syscall("pivot_root", new_root.encode(), put_old.encode())


_prctl = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                          ctypes.c_ulong, use_errno=True)(("prctl", _libc))


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return _check(_prctl(option, a2, a3, a4, a5))


def _mm_areas() -> tuple[int, int, int, int]:
    """(arg_start, arg_end, env_start, env_end) of this process, from /proc/self/stat."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); arg_start..env_end are fields 48..51
    return int(fields[45]), int(fields[46]), int(fields[47]), int(fields[48])


def retitle(title: bytes) -> None:
    """Overwrite this process's argv and environ areas in place: /proc/PID/cmdline then reads
    `title` and /proc/PID/environ reads nothing, whatever the interpreter was started with (its
    path names the install). Forked children inherit the rewritten memory. Python keeps its own
    copies (sys.argv, os.environ), so nothing in the process depends on these bytes."""
    arg_start, arg_end, env_start, env_end = _mm_areas()
    for start, end, data in ((arg_start, arg_end, title[: max(0, arg_end - arg_start - 1)]),
                             (env_start, env_end, b"")):
        if end > start:
            ctypes.memset(start, 0, end - start)
            ctypes.memmove(start, data, len(data))


def sethostname(name: str) -> None:
    b = name.encode()
    _check(_libc.sethostname(b, ctypes.c_size_t(len(b))))


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    syscall("close_range", first, last, flags)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def drop_all_caps(last: int) -> None:
    """Bounding set, ambient set, then effective/permitted/inheritable: all empty."""
    for cap in range(last + 1):
        if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() != 22:  # EINVAL: unknown cap
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    syscall("capset", ctypes.addressof(hdr), ctypes.addressof(data))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp_bpf(prog: bytes) -> None:
    """Install a classic-BPF seccomp filter exported by libseccomp (needs no_new_privs)."""
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    syscall("seccomp", 1, 0, ctypes.addressof(fprog))  # SECCOMP_SET_MODE_FILTER, flags 0
