"""Runs a pack capability inside its sandbox child: read every file once through fds, verify the
signature and every hash, then execute modules compiled from those same bytes.

Nothing is imported from the pack's directory by path and no bytecode is read or written, so
a file swapped after verification, or a planted `__pycache__/*.pyc`, never runs.
"""

from __future__ import annotations

import base64
import importlib.abc
import importlib.util
import sys
import types
from typing import Any

from stockade.packs import tree
from stockade.packs.sigcheck import PackError, canonical, pack_error, verify_files


class MemoryImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `<package>.*` modules from verified in-memory sources only."""

    def __init__(self, package: str, files: dict[str, bytes]):
        self.package = package
        self.sources: dict[str, tuple[bytes, str, bool]] = {package: (files.get("src/__init__.py", b""),
                                                                       "src/__init__.py", True)}
        for rel, data in files.items():
            if not (rel.startswith("src/") and rel.endswith(".py")):
                continue
            parts = rel[len("src/"):-len(".py")].split("/")
            for i in range(1, len(parts)):   # implicit packages for directories
                pkg = ".".join([package, *parts[:i]])
                init = "src/" + "/".join(parts[:i]) + "/__init__.py"
                self.sources.setdefault(pkg, (files.get(init, b""), init, True))
            if parts[-1] == "__init__":
                self.sources[".".join([package, *parts[:-1]])] = (data, rel, True)
            else:
                self.sources[".".join([package, *parts])] = (data, rel, False)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.sources:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=self.sources[fullname][2])

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        source, rel, is_pkg = self.sources[module.__name__]
        if is_pkg:
            module.__path__ = []  # only this importer can find submodules
        code = compile(source, f"<pack {self.package}>/{rel}", "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - verified bytes, inside the sandbox


def package_name(pack: str) -> str:
    return "stockade_pack_" + pack.replace("-", "_")


def load_entry(pack: str, files: dict[str, bytes], entry: str) -> Any:
    sys.dont_write_bytecode = True
    pkg = package_name(pack)
    for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[name]
    importer = MemoryImporter(pkg, files)
    sys.meta_path.insert(0, importer)
    mod_name, func = entry.split(":")
    module = importlib.import_module(f"{pkg}.{mod_name}")
    fn = getattr(module, func, None)
    if not callable(fn):
        raise pack_error(f"entry {entry} is not a function", "pack.yaml", "InvalidInput")
    return fn


def verify_in_place(info: dict[str, Any]) -> dict[str, bytes]:
    """At execution every refusal is PackSignatureInvalid: the store no longer holds what was
    verified at install, whatever the detail (the message still names the file)."""
    try:
        return _verify_in_place(info)
    except PackError as e:
        if e.type == "PackSignatureInvalid":
            raise
        raise PackError("PackSignatureInvalid", e.message, None, e.data) from None


def _verify_in_place(info: dict[str, Any]) -> dict[str, bytes]:
    """Read the mounted pack once and verify it against the trusted key the gateway passed.

    Light on purpose (no YAML, no pydantic): the signature and every file hash are checked here;
    pack.yaml's meaning (the entry points) was parsed by the gateway from the same signed bytes."""
    files, sig = tree.read_dir(info["dir"], skip=(tree.DEPS_DIR,))
    if sig is None:
        raise pack_error("missing", "SIGNATURE")
    signed = verify_files(files, sig, info["key_id"], base64.b64decode(info["pubkey"]), info["name"],
                          info["version"], info.get("now"))
    import hashlib

    if hashlib.sha256(canonical(signed)).hexdigest() != info["manifest_sha256"]:
        raise pack_error("the pack on disk is not the one that was installed", "SIGNATURE")
    if info.get("deps_sha256"):
        from pathlib import Path

        from stockade.packs.tree import deps_digest

        deps = Path(info["dir"]) / tree.DEPS_DIR
        if deps_digest(deps) != info["deps_sha256"]:
            raise pack_error("installed dependencies changed since install", tree.DEPS_DIR)
        sys.path.insert(0, str(deps))
    return files


# Error types a pack may report by raising an exception with `error_type` (stdlib-only packs
# cannot import stockade's errors); anything else stays Internal with the exception's class name.
PACK_ERROR_TYPES = frozenset({"InvalidInput", "EgressDenied", "NetworkError", "Timeout", "ResourceExhausted",
                              "UpstreamError", "NotFound"})


def _pack_raised(e: Exception) -> Exception:
    """A pack's own error -> StockadeError of an allowed type (the pipeline scrubs secrets from it);
    a pack can never claim a gateway verdict such as PolicyDenied or PackSignatureInvalid."""
    from stockade.core.errors import StockadeError, err

    t = e.type if isinstance(e, StockadeError) else getattr(e, "error_type", None)
    if not (isinstance(t, str) and t in PACK_ERROR_TYPES):
        return err("Internal", f"the pack failed ({type(e).__name__})") if isinstance(e, StockadeError) else e
    return err(t, (e.message if isinstance(e, StockadeError) else str(e))[:500] or t)


def run(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The implementation behind every pack capability (the sandbox calls it per call)."""
    info = ctx.extra["pack"]
    files = verify_in_place(info)
    entry = info["entries"].get(ctx.capability)
    if entry is None:
        raise pack_error(f"{ctx.capability} is not in the verified pack.yaml", "pack.yaml")
    fn = load_entry(info["name"], files, entry)
    try:
        out = fn(args)
    except Exception as e:
        raise _pack_raised(e) from None
    if not isinstance(out, dict):
        raise pack_error(f"{entry} returned {type(out).__name__}, not an object", "pack.yaml", "Internal")
    return out
