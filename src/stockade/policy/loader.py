"""Reading policy files from a home (the imperative shell around `model.parse_policy`).

Which capability names are "known" (an unknown exact name is refused): the registry's, plus the
built-in capabilities the design announces (so a policy can be written before a part lands).
Names in other categories may belong to a pack installed later: accepted, with a warning from
`stockade policy validate`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.core.errors import ConfigError
from stockade.core.home import Home, default_home
from stockade.policy.engine import Policy, compile_policy
from stockade.policy.facts import DEFAULT_FACTS, Facts
from stockade.policy.model import PolicyFile, parse_policy

PACKAGE_DIR = Path(__file__).parent
SYSTEM_PATH = PACKAGE_DIR / "system.yaml"
TEMPLATES_DIR = PACKAGE_DIR / "templates"
TEMPLATES = ("personal", "strict", "open")
AGENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

# Built-in sandboxed capabilities and their arguments: the fallback when the registry cannot load
# (so policy errors still show). Kept equal to the definitions' schemas by tests/policy.
PLANNED: dict[str, frozenset[str] | None] = {
    "filesystem.append": frozenset({"content", "encoding", "parents", "path"}),
    "filesystem.copy": frozenset({"destination", "overwrite", "recursive", "source"}),
    "filesystem.delete": frozenset({"path", "recursive"}),
    "filesystem.list": frozenset({"include_hidden", "max_results", "path", "recursive"}),
    "filesystem.mkdir": frozenset({"parents", "path"}),
    "filesystem.move": frozenset({"destination", "overwrite", "source"}),
    "filesystem.read": frozenset({"encoding", "max_bytes", "offset", "path"}),
    "filesystem.restore": frozenset({"destination", "overwrite", "path", "trash_id"}),
    "filesystem.search": frozenset({"include_hidden", "max_results", "path", "pattern"}),
    "filesystem.search_content": frozenset({"case_sensitive", "include", "include_hidden", "max_results", "path",
                                            "query", "regex"}),
    "filesystem.stat": frozenset({"follow_symlinks", "path"}),
    "filesystem.write": frozenset({"content", "encoding", "overwrite", "parents", "path"}),
    "network.dns_lookup": frozenset({"name", "timeout"}),
    "network.http_request": frozenset({"body", "body_base64", "follow_redirects", "headers", "max_bytes",
                                       "max_redirects", "method", "sign", "timeout", "url"}),
    "network.port_check": frozenset({"host", "port", "timeout"}),
    "process.run": frozenset({"argv", "cwd", "env", "stdin", "timeout"}),
    # agent state (in-process): listed so a policy naming them loads even without the registry
    "state.delete": frozenset({"expected_version", "key"}),
    "state.get": frozenset({"key"}),
    "state.list": frozenset({"cursor", "limit", "prefix"}),
    "state.set": frozenset({"expected_version", "key", "ttl_seconds", "value"}),
}
STRICT_CATEGORIES = frozenset({"filesystem", "process", "network", "system", "agent", "state"})


@dataclass(frozen=True)
class Catalog:
    """Capability names and argument names, for refusing typos and for validation warnings."""

    args: dict[str, frozenset[str] | None]

    def known(self, name: str) -> bool:
        return name in self.args or name.split(".", 1)[0] not in STRICT_CATEGORIES

    def exists(self, name: str) -> bool:
        return name in self.args

    def names(self) -> list[str]:
        return sorted(self.args)


def catalog(definitions: Iterable[Any] = ()) -> Catalog:
    """From capability definitions (anything with `name` and `input_schema`) over `PLANNED`.

    Where the definitions come from (the live registry, the built-in one, the vault's) is the
    caller's business (`policy.setup.catalog`): this module imports nothing above `core`.
    """
    args: dict[str, frozenset[str] | None] = dict(PLANNED)
    for d in definitions:
        props = d.input_schema.get("properties")
        args[d.name] = frozenset(props) if isinstance(props, dict) else None
    return Catalog(args)


def context(home: Home | None) -> dict[str, str]:
    root = home.root if home is not None else default_home().absolute()
    return {"home": str(root)}


def _known(cat: Catalog | None) -> Callable[[str], bool] | None:
    return cat.known if cat is not None else None


def load_system(ctx: dict[str, str], facts: Facts = DEFAULT_FACTS) -> PolicyFile:
    return parse_policy(SYSTEM_PATH.read_text(encoding="utf-8"), str(SYSTEM_PATH), "system", ctx=ctx, facts=facts)


MAX_POLICY_BYTES = 4 << 20


def read_text(path: Path) -> str:
    """A policy file's text, read only if it is a regular file (a FIFO or device would block or
    never end: opened non-blocking and refused after fstat) and only if it did not change while
    being read (a writer mid-way: its partial prefix may still validate)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError([f"{path}:0: cannot read: {e.strerror}"]) from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise ConfigError([f"{path}:0: not a regular file (a policy must be a plain file)"])
        if before.st_size > MAX_POLICY_BYTES:
            raise ConfigError([f"{path}:0: larger than {MAX_POLICY_BYTES} bytes"])
        data = os.read(fd, MAX_POLICY_BYTES + 1)
        while len(data) <= MAX_POLICY_BYTES and (chunk := os.read(fd, MAX_POLICY_BYTES + 1 - len(data))):
            data += chunk
        after = os.fstat(fd)
    except OSError as e:
        raise ConfigError([f"{path}:0: cannot read: {e.strerror}"]) from None
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise ConfigError([f"{path}:0: changed while being read (still being written?); kept the last policy"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}:0: not UTF-8 text"]) from None


def load_file(path: Path, layer: str, *, home: Home | None = None, cat: Catalog | None = None) -> PolicyFile:
    return parse_policy(read_text(path), str(path), layer, ctx=context(home), known=_known(cat))


def policy_files(home: Home) -> tuple[Path | None, dict[str, Path], list[str]]:
    """The org file (if any), agent files by agent name, and naming problems."""
    org = home.policies / "org.yaml"
    agents: dict[str, Path] = {}
    problems: list[str] = []
    adir = home.policies / "agents"
    if adir.is_dir():
        for p in sorted(adir.iterdir()):
            if p.name.startswith("."):
                continue
            if p.suffix == ".yml":
                problems.append(f"{p}:1: policy files must end in .yaml (this one would be ignored)")
            elif p.suffix == ".yaml":
                if not AGENT_NAME.match(p.stem):
                    problems.append(f"{p}:1: {p.stem!r} is not a valid agent name")
                else:
                    agents[p.stem] = p
    if (home.policies / "org.yml").exists():
        problems.append(f"{home.policies / 'org.yml'}:1: policy files must end in .yaml (this one would be ignored)")
    return (org if org.exists() else None), agents, problems


def load_home(home: Home, cat: Catalog | None = None, facts: Facts = DEFAULT_FACTS) -> Policy:
    """Every layer of a home, compiled; ConfigError lists every problem in every file. `facts`:
    the live lookups conditions consult (`facts.gateway_facts` in a running gateway)."""
    ctx = context(home)
    system = load_system(ctx, facts)
    org_path, agent_paths, errors = policy_files(home)
    org = None
    agents: dict[str, PolicyFile] = {}
    known = _known(cat)
    if org_path is not None:
        try:
            org = parse_policy(read_text(org_path), str(org_path), "org", ctx=ctx, known=known, facts=facts)
        except ConfigError as e:
            errors.extend(e.errors)
    for name, p in agent_paths.items():
        try:
            agents[name] = parse_policy(read_text(p), str(p), "agent", ctx=ctx, known=known, facts=facts)
        except ConfigError as e:
            errors.extend(e.errors)
    if errors:
        raise ConfigError(errors)
    return compile_policy(system, org, agents)


def signature(home: Home) -> tuple[Any, ...]:
    """Cheap change detector for hot reload: (name, mtime_ns, size, inode) of every policy file."""
    out = []
    for d in (home.policies, home.policies / "agents"):
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.suffix in (".yaml", ".yml"):
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def template_text(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"unknown policy template {name!r} (have: {', '.join(TEMPLATES)})")
    return (TEMPLATES_DIR / f"{name}.yaml").read_text(encoding="utf-8")
