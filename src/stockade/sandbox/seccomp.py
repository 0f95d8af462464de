"""seccomp allowlists built once with libseccomp (pyseccomp) and exported as BPF.

One program per profile: an allowlist (default EPERM) with argument rules for clone, socket,
socketpair, personality and ioctl (every command but TIOCSTI/TIOCLINUX, compared on the low 32
bits: CVE-2017-5226, CVE-2019-10063, CVE-2023-28100), clone3 -> ENOSYS. libseccomp cannot hold
an unconditional ALLOW next to a conditional ERRNO for one syscall, so the ioctl complement is
spelled out as ALLOW rules (`ioctl_allow_rules`). Only the native architecture is in the filter
(x32 and i386 numbers hit the bad-arch action: kill).
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

# Calls a handler, a shell and coreutils need. Everything else gets EPERM, including the seed
# deny list: mount umount2 pivot_root ptrace process_vm_* init/finit/delete_module kexec_*
# reboot swapon/off syslog settimeofday perf_event_open bpf userfaultfd keyctl add_key
# request_key unshare setns io_uring_* open_by_handle_at name_to_handle_at chroot fsopen ...
_ALLOW_TEXT = """
getcwd fchmodat2 futex_waitv read write open close stat fstat lstat poll lseek mmap mprotect
munmap brk rt_sigaction rt_sigprocmask rt_sigreturn pread64 pwrite64 readv writev access
pipe select sched_yield mremap msync mincore madvise dup dup2 pause nanosleep getitimer alarm
setitimer getpid sendfile connect accept sendto recvfrom sendmsg recvmsg shutdown bind listen
getsockname getpeername setsockopt getsockopt exit wait4 kill uname fcntl flock fsync fdatasync
truncate ftruncate getdents chdir fchdir rename mkdir rmdir creat link unlink symlink readlink
chmod fchmod chown fchown lchown umask gettimeofday getrlimit getrusage sysinfo times getuid
getgid geteuid getegid setpgid getppid getpgrp setsid getgroups getresuid getresgid getpgid getsid
capget rt_sigpending rt_sigtimedwait rt_sigsuspend sigaltstack utime statfs fstatfs getpriority
setpriority sched_getparam sched_getscheduler sched_get_priority_max sched_get_priority_min
sched_rr_get_interval prctl arch_prctl setrlimit sync gettid readahead getxattr lgetxattr
fgetxattr listxattr llistxattr flistxattr tkill time futex sched_setaffinity sched_getaffinity
getdents64 set_tid_address restart_syscall fadvise64 timer_create timer_settime timer_gettime
timer_getoverrun timer_delete clock_gettime clock_getres clock_nanosleep exit_group epoll_wait
epoll_ctl tgkill utimes waitid inotify_init inotify_add_watch inotify_rm_watch openat openat2 mkdirat
fchownat futimesat newfstatat unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat
pselect6 ppoll set_robust_list get_robust_list splice tee sync_file_range vmsplice utimensat
epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime timerfd_gettime accept4
signalfd4 eventfd2 epoll_create epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev
rt_tgsigqueueinfo recvmmsg prlimit64 syncfs sendmmsg getcpu renameat2 getrandom memfd_create
membarrier copy_file_range preadv2 pwritev2 statx rseq pidfd_open pidfd_send_signal close_range
faccessat2 epoll_pwait2 sched_getattr ioprio_get mlock munlock mlock2 landlock_create_ruleset
landlock_add_rule landlock_restrict_self seccomp pkey_mprotect pkey_alloc pkey_free fork vfork
execve execveat
"""
ALLOW = sorted(set(_ALLOW_TEXT.split()))

STRICT_DENY = ("execve", "execveat", "fork", "vfork")

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
NS_FLAGS = 0x7E020000          # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
CLONE_THREAD = 0x00010000
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
TIOCSTI = 0x5412
TIOCLINUX = 0x541C


def _export(f: Any) -> bytes:
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=False) as fh:
            f.export_bpf(fh)
    finally:
        os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    return b"".join(chunks)


def build(profile: str = "default") -> list[bytes]:
    """BPF programs for a profile ("default" | "strict"), to load in order (allowlist first)."""
    import pyseccomp as sc

    if profile not in ("default", "strict"):
        raise ValueError(f"unknown seccomp profile {profile!r}")
    f = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary tree
    f.set_attr(sc.Attr.CTL_NNP, 0)       # the child sets no_new_privs itself
    deny = set(STRICT_DENY) if profile == "strict" else set()
    for name in ALLOW:
        if name in deny:
            continue
        with contextlib.suppress(ValueError, OSError):  # unknown to this libseccomp/arch
            f.add_rule(sc.ALLOW, name)
    if profile == "strict":
        # threads only: CLONE_THREAD set and no namespace flags
        f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, NS_FLAGS | CLONE_THREAD, CLONE_THREAD))
    else:
        f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, NS_FLAGS, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags live in memory seccomp cannot read
    for fam in (AF_UNIX, AF_INET, AF_INET6):
        f.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, fam))
    f.add_rule(sc.ALLOW, "socketpair", sc.Arg(0, sc.EQ, AF_UNIX))
    for p in PERSONALITIES:
        f.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, p))
    for mask, value in ioctl_allow_rules((TIOCSTI, TIOCLINUX)):
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.MASKED_EQ, mask, value))
    return [_export(f)]


def ioctl_allow_rules(denied: tuple[int, ...]) -> list[tuple[int, int]]:
    """Pure: (mask, value) pairs whose union is every 32-bit ioctl command except `denied`.

    The kernel takes `cmd` as a 32-bit int, so only the low 32 bits are compared (the high-bit
    TIOCSTI variant, CVE-2019-10063, lands in the denied set too). A command differs from every
    denied one if it differs in a bit where they all agree; the few commands that agree with
    them on all those bits are listed one by one.
    """
    full = 0xFFFFFFFF
    common = full
    for d in denied[1:]:
        common &= ~(denied[0] ^ d) & full
    rules = [(1 << i, (~denied[0] & (1 << i))) for i in range(32) if common >> i & 1]
    free = [i for i in range(32) if not common >> i & 1]
    for k in range(1 << len(free)):
        v = denied[0] & common
        for j, bit in enumerate(free):
            if k >> j & 1:
                v |= 1 << bit
        if v not in denied:
            rules.append((full, v))
    return rules


def available() -> bool:
    try:
        build("default")
        return True
    except Exception:
        return False
