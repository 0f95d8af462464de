"""The data home's volume: what sandboxes see, on a filesystem of its own.

Why: the kernel prints a bind mount's root in /proc/self/mountinfo as its path within its
filesystem. The sandbox's /workspace, /trash, /shared and /pack are binds of data-home
directories, so on a home that shares the root filesystem those lines name the home's host
path (`/var/lib/stockade/workspaces/bot`) to any agent that reads mountinfo. With the four
directories on a filesystem of their own the same line reads `/workspaces/bot`.

Layout: a sparse ext4 image `HOME/volume.img`, loop-mounted (nodev, nosuid) at `HOME/volume`,
and `HOME/{workspaces,trash,shared,packs}` bind mounts of its subdirectories, so every path the
rest of the code uses stays the same. The owner may mount a partition or logical volume at
`HOME/volume` instead (fstab); then no image is needed. The size caps what agents and packs can
write in all: a hard disk quota the root filesystem never feels.

Pure: `parse_mountinfo`, `shown_root`, `exposed`, `parse_size`. Shell: `create`, `ensure_mounted`,
`unmount`, `status`, which shell out to util-linux `mount`/`umount` and e2fsprogs `mkfs.ext4`
(loop set-up, autoclear and the mount syscalls done right, rather than by hand).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.core.errors import StockadeError, err
from stockade.core.home import Home

VOLUME_DIRS = ("workspaces", "trash", "shared", "packs")
IMAGE_NAME = "volume.img"
MOUNT_NAME = "volume"
MIN_SIZE = 64 << 20
DEFAULT_MAX = 8 << 30
MOUNT_OPTIONS = "nodev,nosuid"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


# -- pure ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mount:
    """One line of /proc/<pid>/mountinfo (proc(5)): the fields this module needs."""

    dev: str           # major:minor, one per filesystem (superblock)
    root: str          # the mount's root as a path within its filesystem
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every well-formed line, in order (later lines are mounted on top of earlier ones)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:] or len(fields) < 10:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        root, mountpoint, source = (_unescape(f) for f in (fields[3], fields[4], fields[sep + 2]))
        out.append(Mount(fields[2], root, mountpoint, fields[sep + 1], source))
    return out


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def mount_of(mounts: list[Mount], path: str) -> Mount | None:
    """The mount `path` lives on: the deepest mount point above it, the last one stacked there."""
    best: Mount | None = None
    for m in mounts:
        if _within(path, m.mountpoint) and (best is None or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best


def shown_root(mounts: list[Mount], path: str) -> str:
    """What the kernel prints as the root of a bind mount of `path` (absolute, normalised)."""
    m = mount_of(mounts, path)
    if m is None:
        return path
    rel = os.path.relpath(path, m.mountpoint)
    return os.path.normpath(os.path.join(m.root, rel)) if rel != "." else m.root


def exposed(mounts: list[Mount], home_root: str, paths: list[str]) -> dict[str, str]:
    """The paths whose bind mounts would name a host path inside a sandbox, with what they show.

    A path is hidden when the filesystem it lives on has its root mounted at or below the home
    (the home's volume, or a home that is a filesystem of its own), and the mount it lives on
    is there too: then the shown root is a path within that filesystem only. Otherwise, say on
    the root filesystem or through a bind of a directory of it, it is a host path."""
    inside = {m.dev for m in mounts if m.root == "/" and _within(m.mountpoint, home_root)}
    out = {}
    for p in paths:
        m = mount_of(mounts, p)
        if m is None or m.dev not in inside or not _within(m.mountpoint, home_root):
            out[p] = shown_root(mounts, p)
    return out


def parse_size(text: str) -> int:
    """`8G`, `512M`, `1T`, `1073741824` (binary units) -> bytes; ValueError with the reason."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"size {text!r}: expected a number with an optional K, M, G or T suffix")
    size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size < MIN_SIZE:
        raise ValueError(f"size {text!r}: the volume needs at least {MIN_SIZE >> 20} MiB")
    return size


def default_size(free_bytes: int) -> int:
    """8 GiB, or half the free space where that is less (the image is sparse: it takes disk
    only as agents write, so it must not promise more than the disk has)."""
    return max(MIN_SIZE, min(DEFAULT_MAX, (free_bytes // 2) >> 20 << 20))


# -- shell ---------------------------------------------------------------------------------
def image_path(home: Home) -> Path:
    return home.root / IMAGE_NAME


def mount_path(home: Home) -> Path:
    return home.root / MOUNT_NAME


def _mounts() -> list[Mount]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def _volume_error(message: str, **data: Any) -> StockadeError:
    return err("Unavailable", message, [{"action": "fix_volume", "description":
                                         "see `stockade volume status` and docs/sandbox.md (\"The volume\")"}],
               **data)


def _run(argv: list[str]) -> None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _volume_error(f"{argv[0]}: {e}") from None
    if r.returncode:
        raise _volume_error(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()[:300]}")


def configured(home: Home) -> bool:
    """A home uses a volume when it has the image, or the owner mounted one at HOME/volume."""
    return image_path(home).exists() or os.path.ismount(mount_path(home))


def _is_bound(home: Home, name: str) -> bool:
    """HOME/name is the volume's subdirectory (same device and inode), not the bare directory."""
    try:
        a, b = os.stat(home.root / name), os.stat(mount_path(home) / name)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _move_into(src: Path, dst: Path) -> list[str]:
    """Move what a bare directory holds into the volume (before the bind hides it). Refuses on
    a name that exists on both sides: nothing is overwritten or lost."""
    names = sorted(os.listdir(src))
    clash = [n for n in names if os.path.lexists(dst / n)]
    if clash:
        raise _volume_error(f"{src} and {dst} both hold {', '.join(clash[:5])}: move one aside, then retry",
                            path=str(src))
    for n in names:
        _run(["cp", "-a", "--", str(src / n), str(dst / n)])
        p = src / n
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return [str(src / n) for n in names]


def ensure_mounted(home: Home) -> list[str]:
    """Idempotent: the volume mounted at HOME/volume and the four directories bound from it.
    Files found in a bare directory (written while the volume was not mounted) are moved in.
    Returns what it did, for the caller to log. Raises Unavailable, naming what failed."""
    done: list[str] = []
    mnt = mount_path(home)
    if not os.path.ismount(mnt):
        if not image_path(home).exists():
            return done
        mnt.mkdir(mode=0o700, exist_ok=True)
        _run(["mount", "-o", f"loop,{MOUNT_OPTIONS}", str(image_path(home)), str(mnt)])
        done.append(f"mounted {image_path(home)} at {mnt}")
    os.chmod(mnt, 0o700)
    for name in VOLUME_DIRS:
        inner, outer = mnt / name, home.root / name
        if not inner.exists():
            inner.mkdir(mode=0o700)
            os.chmod(inner, 0o700)    # under any umask; later modes (shared/ is 0755) are the parts'
        if _is_bound(home, name):
            continue
        outer.mkdir(mode=0o700, exist_ok=True)
        moved = _move_into(outer, inner)
        done.extend(f"moved {p} into the volume" for p in moved)
        _run(["mount", "--bind", str(inner), str(outer)])
        done.append(f"bound {inner} at {outer}")
    return done


def create(home: Home, size: int) -> list[str]:
    """A new sparse ext4 image of `size` bytes, mounted and bound (existing files moved in)."""
    if os.geteuid() != 0:
        raise _volume_error("creating the volume needs root (loop devices and mounts)")
    img = image_path(home)
    if configured(home):
        raise _volume_error(f"{home.root} already has a volume ({img if img.exists() else mount_path(home)})")
    fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    try:
        # lazy_*_init: the file is new and sparse, so the journal and inode tables already read
        # as zeros; writing them (64 MiB for 8 GiB) would only take disk the volume may never use.
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "stockade",
              "-E", "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1", str(img)])
        return [str(img), *ensure_mounted(home)]
    except StockadeError:
        if not os.path.ismount(mount_path(home)):
            img.unlink(missing_ok=True)
        raise


def unmount(home: Home) -> list[str]:
    """The binds, then the volume (its loop device detaches itself). Idempotent."""
    done = []
    for name in VOLUME_DIRS:
        p = home.root / name
        while _is_bound(home, name) and os.path.ismount(p):
            _run(["umount", str(p)])
            done.append(f"unmounted {p}")
    mnt = mount_path(home)
    if os.path.ismount(mnt) and image_path(home).exists():
        _run(["umount", str(mnt)])
        done.append(f"unmounted {mnt}")
    return done


def unmount_under(root: str | os.PathLike[str]) -> None:
    """Lazily unmount every mount below `root`, deepest first: what scratch homes (benches,
    tests) leave, since a home's mounts outlive its gateway by design, as a partition's would."""
    top = os.path.realpath(root)
    for mp in sorted((m.mountpoint for m in _mounts() if _within(m.mountpoint, top) and m.mountpoint != top),
                     key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def status(home: Home) -> dict[str, Any]:
    """What `stockade volume status` and doctor show: configured, mounted, sizes, and which
    directories a sandbox's mountinfo would name by their host path."""
    mnt, img = mount_path(home), image_path(home)
    out: dict[str, Any] = {"configured": configured(home), "image": str(img) if img.exists() else None,
                           "mount": str(mnt), "mounted": os.path.ismount(mnt),
                           "bound": {n: _is_bound(home, n) for n in VOLUME_DIRS}}
    if out["mounted"]:
        st = os.statvfs(mnt)
        out["size_bytes"] = st.f_blocks * st.f_frsize
        out["free_bytes"] = st.f_bavail * st.f_frsize
    paths = [str(home.root / n) for n in VOLUME_DIRS]
    out["exposed"] = exposed(_mounts(), str(home.root.resolve()), [str(Path(p).resolve()) for p in paths])
    return out
