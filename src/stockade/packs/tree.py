"""Reading a pack's bytes safely: a directory through file descriptors, or a tarball.

Both refuse symlinks, hard links, devices, FIFOs, `..` and absolute paths, bytecode and unknown
files (manifest.check_path), and cap the file count and total size, so nothing outside the pack
can be pulled in and nothing unverified can be executed later.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stockade.packs.sigcheck import MAX_FILES, MAX_PACK_BYTES, check_path, pack_error

SIGNATURE = "SIGNATURE"
DEPS_DIR = "deps"           # installed dependencies live beside the pack in the store, not in the manifest


def read_dir(root: str | os.PathLike[str], *, skip: tuple[str, ...] = ()) -> tuple[dict[str, bytes], bytes | None]:
    """Every file under `root` (relative path -> bytes) and the SIGNATURE bytes (or None).

    Walks with openat(O_NOFOLLOW) from a directory fd, so a symlink planted anywhere (even
    swapped in during the walk) is refused rather than followed. A file that vanishes or changes
    kind between listing and reading is a pack that changed under us: PackSignatureInvalid
    naming the file, never an OSError."""
    files: dict[str, bytes] = {}
    signature: bytes | None = None
    total = 0
    with _changed_is_invalid(str(root)):
        rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stack: list[tuple[int, str]] = [(rootfd, "")]
    try:
        while stack:
            dfd, prefix = stack.pop()
            try:
                for name in sorted(os.listdir(dfd)):
                    rel = f"{prefix}{name}"
                    if not prefix and name in skip:
                        continue
                    with _changed_is_invalid(rel):
                        entry = _read_entry(dfd, name, rel, MAX_PACK_BYTES - total + 1)
                    if isinstance(entry, int):
                        stack.append((entry, rel + "/"))
                        continue
                    total += len(entry)
                    if total > MAX_PACK_BYTES:
                        raise pack_error(f"pack larger than {MAX_PACK_BYTES} bytes", rel, "InvalidInput")
                    if rel == SIGNATURE:
                        signature = entry
                        continue
                    check_path(rel)
                    files[rel] = entry
                    if len(files) > MAX_FILES:
                        raise pack_error(f"more than {MAX_FILES} files", rel, "InvalidInput")
            finally:
                os.close(dfd)
    except BaseException:
        for fd, _ in stack:
            os.close(fd)
        raise
    return files, signature


@contextmanager
def _changed_is_invalid(rel: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        why = errno.errorcode.get(e.errno or 0, str(e.errno))
        raise pack_error(f"the pack changed while it was read ({why})", rel) from None


def _read_entry(dfd: int, name: str, rel: str, limit: int) -> int | bytes:
    """One directory entry: an fd for a subdirectory, or a regular file's bytes (at most `limit`)."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise pack_error("symbolic links are not allowed in a pack", rel, "InvalidInput")
    if stat.S_ISDIR(st.st_mode):
        if name == "__pycache__":
            raise pack_error("compiled bytecode is not allowed in a pack", rel, "InvalidInput")
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    if not stat.S_ISREG(st.st_mode):
        raise pack_error("only regular files are allowed in a pack", rel, "InvalidInput")
    if st.st_nlink > 1:
        raise pack_error("hard-linked files are not allowed in a pack", rel, "InvalidInput")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise pack_error("file changed while reading", rel)
        return _read_all(fd, limit)
    finally:
        os.close(fd)


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        size += len(b)
        if size > limit:
            return b"".join(chunks) + b  # caller sees the overflow
        chunks.append(b)


def read_tarball(path: str | os.PathLike[str]) -> tuple[dict[str, bytes], bytes | None]:
    """A `.tar`/`.tar.gz` pack; one top-level directory is stripped if every member shares it."""
    try:
        tf = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by the `with tf` below
    except (tarfile.TarError, OSError) as e:
        raise pack_error(f"not a readable tarball ({e})", str(path), "InvalidInput") from None
    members: list[tuple[str, bytes]] = []
    total = 0
    with tf:
        for m in tf.getmembers():
            name = m.name
            if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                raise pack_error("path escapes the pack", name, "InvalidInput")
            if m.isdir():
                continue
            if m.issym() or m.islnk():
                raise pack_error("links are not allowed in a pack", name, "InvalidInput")
            if not m.isfile():
                raise pack_error("only regular files are allowed in a pack", name, "InvalidInput")
            total += m.size
            if total > MAX_PACK_BYTES or len(members) >= MAX_FILES:
                raise pack_error("pack too large", name, "InvalidInput")
            f = tf.extractfile(m)
            members.append((name.removeprefix("./"), f.read() if f else b""))
    tops = {n.split("/", 1)[0] for n, _ in members}
    strip = len(tops) == 1 and all("/" in n for n, _ in members)
    files: dict[str, bytes] = {}
    signature = None
    for name, data in members:
        rel = name.split("/", 1)[1] if strip else name
        if rel == SIGNATURE:
            signature = data
            continue
        check_path(rel)
        if rel in files:
            raise pack_error("duplicate member", rel, "InvalidInput")
        files[rel] = data
    return files, signature


def read_any(path: str | os.PathLike[str]) -> tuple[dict[str, bytes], bytes | None]:
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        return read_dir(p, skip=(DEPS_DIR,))
    if p.is_file():
        return read_tarball(p)
    raise pack_error("no such pack directory or tarball", str(path), "InvalidInput")


def tarball_bytes(files: dict[str, bytes], signature: bytes | None, top: str) -> bytes:
    """Build a pack tarball in memory (used by tests and `pack sign --tarball`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        items = dict(files)
        if signature is not None:
            items[SIGNATURE] = signature
        for rel, data in sorted(items.items()):
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = len(data)
            info.mode = 0o444
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def deps_digest(deps: Path) -> str | None:
    """SHA-256 over every installed dependency file (sorted path, size, content hash)."""
    if not deps.exists():
        return None
    h = hashlib.sha256()
    for p in sorted(deps.rglob("*")):
        if p.is_symlink():
            raise pack_error("symlink in installed dependencies", str(p.relative_to(deps)))
        if p.is_file():
            data = p.read_bytes()
            h.update(f"{p.relative_to(deps)}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()
