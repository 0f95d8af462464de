"""The data home (docs/design.md, "The data home"): layout, permissions and initialisation.

Directories are 0700 and files 0600, always: the home holds key hashes, the vault and the audit
log, and nothing in it is for anyone but the owner (and root).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stockade.core.config import DEFAULT_YAML, Config, load_config
from stockade.core.db import connect as connect_db
from stockade.core.encoding import write_all

SUBDIRS = ("policies", "policies/agents", "audit", "keys", "workspaces", "shared", "packs", "trash", "run")


def default_home() -> Path:
    env = os.environ.get("STOCKADE_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/stockade")
    return Path.home() / ".local/share/stockade"


@dataclass(frozen=True)
class Home:
    """Paths inside one data home. Cheap to build; touches nothing until asked."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str] | None) -> Home:
        return cls(Path(path).absolute() if path else default_home().absolute())

    # -- well-known paths --------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "stockade.yaml"

    @property
    def db_path(self) -> Path:
        return self.root / "stockade.db"

    @property
    def vault_path(self) -> Path:
        return self.root / "vault.db"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def packs(self) -> Path:
        return self.root / "packs"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def admin_sock(self) -> Path:
        return self.run / "admin.sock"

    @property
    def ports_file(self) -> Path:
        return self.run / "ports.json"

    def workspace(self, agent: str) -> Path:
        return self.workspaces / agent

    def exists(self) -> bool:
        return self.config_path.exists() and self.db_path.exists()

    def config(self) -> Config:
        return load_config(self.config_path)

    def db(self) -> sqlite3.Connection:
        return connect_db(self.db_path)

    # -- creation ------------------------------------------------------------------------
    def ensure_layout(self) -> None:
        """Create missing directories (0700) and tighten modes of existing ones."""
        old = os.umask(0o077)
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, 0o700)
            for sub in SUBDIRS:
                p = self.root / sub
                p.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(p, 0o700)
        finally:
            os.umask(old)


def write_private(path: Path, data: bytes | str, *, exist_ok: bool = True) -> None:
    """Write a file atomically with mode 0600 (never briefly world-readable)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        write_all(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not exist_ok and path.exists():
        tmp.unlink()
        raise FileExistsError(path)
    os.replace(tmp, path)


# What a part adds to a new home (policy template, audit key, TLS cert, ...): `init(home,
# policy_template) -> list[str]` in the part's setup module, passed in by the wiring
# (`stockade.gateway.service.init_home`), which knows the parts; core does not.
InitHook = Callable[[Home, str], list[str]]


def init_home(home: Home, policy: str = "personal", hooks: Sequence[InitHook] = ()) -> list[str]:
    """Create a home (idempotent): layout, config, database, then each part's `hooks`.
    Returns what was created, for the CLI to show."""
    created: list[str] = []
    old = os.umask(0o077)
    try:
        home.ensure_layout()
        if not home.config_path.exists():
            write_private(home.config_path, DEFAULT_YAML)
            created.append(str(home.config_path))
        if not home.db_path.exists():
            created.append(str(home.db_path))
        conn = connect_db(home.db_path)
        conn.close()
        for hook in hooks:
            created.extend(hook(home, policy))
    finally:
        os.umask(old)
    return created
