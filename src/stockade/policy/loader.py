"""Reading policy files from a home (the imperative shell around `model.parse_policy`).

Which capability names are "known" (an unknown exact name is refused): the registry's, plus the
built-in capabilities the design announces (so a policy can be written before a part lands).
Names in other categories may belong to a pack installed later: accepted, with a warning from
`stockade policy validate`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.core.errors import ConfigError
from stockade.core.home import Home
from stockade.policy.engine import Policy, compile_policy
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
}
STRICT_CATEGORIES = frozenset({"filesystem", "process", "network", "system", "agent"})


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


def catalog(registry: Any | None = None) -> Catalog:
    """From a registry (or the built-in one, tolerating parts that do not load yet)."""
    args: dict[str, frozenset[str] | None] = dict(PLANNED)
    if registry is None:
        try:
            from stockade.capabilities.registry import load_registry

            registry = load_registry()
        except Exception:  # noqa: BLE001 - another part's broken definition must not hide policy errors
            registry = None
    defs = list(registry.all()) if registry is not None else []
    if registry is not None and "secrets.list" not in registry:
        # The vault registers its in-process capabilities when the gateway starts; offline
        # validation must know them too.
        try:
            from stockade.capabilities.registry import parse_definitions
            from stockade.vault import setup as vault_setup

            vpath = Path(vault_setup.__file__).with_name("capabilities.yaml")
            defs += parse_definitions(vpath.read_text(), str(vpath))
        except Exception:  # noqa: BLE001, S110 - without the vault part there is nothing to add
            pass
    for d in defs:
        props = d.input_schema.get("properties")
        args[d.name] = frozenset(props) if isinstance(props, dict) else None
    return Catalog(args)


def context(home: Home | None) -> dict[str, str]:
    from stockade.core.home import default_home

    root = home.root if home is not None else default_home().absolute()
    return {"home": str(root)}


def _known(cat: Catalog | None) -> Callable[[str], bool] | None:
    return cat.known if cat is not None else None


def load_system(ctx: dict[str, str]) -> PolicyFile:
    return parse_policy(SYSTEM_PATH.read_text(encoding="utf-8"), str(SYSTEM_PATH), "system", ctx=ctx)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}:0: not UTF-8 text"]) from None
    except OSError as e:
        raise ConfigError([f"{path}:0: cannot read: {e.strerror}"]) from None


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


def load_home(home: Home, cat: Catalog | None = None) -> Policy:
    """Every layer of a home, compiled; ConfigError lists every problem in every file."""
    ctx = context(home)
    system = load_system(ctx)
    org_path, agent_paths, errors = policy_files(home)
    org = None
    agents: dict[str, PolicyFile] = {}
    known = _known(cat)
    if org_path is not None:
        try:
            org = parse_policy(read_text(org_path), str(org_path), "org", ctx=ctx, known=known)
        except ConfigError as e:
            errors.extend(e.errors)
    for name, p in agent_paths.items():
        try:
            agents[name] = parse_policy(read_text(p), str(p), "agent", ctx=ctx, known=known)
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
