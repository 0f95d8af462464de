"""The per-call Linux sandbox (docs/design.md "Sandbox", issue 6).

Handler interface (the contract for `execution: sandbox` capabilities)
----------------------------------------------------------------------
An implementation is a plain function registered like any other capability::

    from stockade.capabilities.registry import implements
    from stockade.core.errors import err
    from stockade.sandbox import SandboxContext

    @implements("filesystem.stat")
    def stat(ctx: SandboxContext, args: dict) -> dict:
        ...                      # runs INSIDE the sandbox child, every layer already applied
        raise err("FileNotFound", "no such file", path=args["path"])   # comes back as-is

* It runs in a fresh child forked from the zygote for this one call, after: the agent's netns
  joined; user/mount/pid/uts/ipc/cgroup namespaces unshared; the agent's cgroup entered;
  pivot_root into a minimal root; all capabilities dropped; no_new_privs; inherited fds closed;
  Landlock; seccomp (last). Its uid is 1100 (gid 1100), mapped to an unprivileged host uid.
* The filesystem it sees: `/workspace` (rw, the agent's), `/trash` (rw, the agent's trash;
  `filesystem.delete` moves files there), `/tmp` (tmpfs, rw), `/shared` and `/definitions` (ro),
  `/usr /bin /sbin /lib /lib64` (ro), a minimal `/etc` (ro), fresh `/proc`, `/dev` with
  null zero full random urandom. The cwd is `/workspace`. Nothing else of the host exists.
* `args` is the validated argument object (secrets already resolved by the pipeline). Return a
  JSON-serialisable dict matching the definition's output schema. The encoded result must fit
  `ctx.profile.max_output_bytes` or the call fails with ResourceExhausted(resource=output).
* Raise `stockade.core.errors.StockadeError` (`err(type, message, **data)`) for expected failures:
  the gateway re-raises the same type, message, recovery and data. Any other exception becomes
  `Internal` (no traceback leaves the sandbox).
* The default seccomp profile allows fork/vfork/clone (without namespace flags) and execve, so a
  handler may spawn `/bin/sh` etc. (process.run). The `strict` profile denies execve/execveat/
  fork/vfork: such handlers then get EPERM (OSError) and should map it to an error.
* Limits: the call must finish within `ctx.profile.timeout` seconds (wall clock) or the whole
  pid namespace is killed and the caller gets `Timeout`. The call's own cgroup leaf caps its
  memory (no swap), pids and io at `ctx.profile`; the agent's group above it caps memory, pids,
  CPU and io in aggregate for all of its concurrent calls. `ctx.deadline` is the
  `time.monotonic()` value at which the call will be killed (handlers running a command should
  use a smaller timeout so they can report partial output themselves).
* The network is the agent's own namespace, or for a pack the pack's own (only `lo` unless the
  egress part added a route);
  TCP bind is denied by Landlock and TCP connect is limited to the profile's egress ports.

This package: `zygote` (fork server), `child` (per-call layer setup, minimal root included),
`libc` (raw syscalls), `landlock` (ctypes), `seccomp` (libseccomp allowlists), `cgroups` (v1 + v2),
`nftguard` (per-call check that the agent's egress rules are loaded), `agentns` (the agents'
network namespaces, from egress), `profile` (the policy's `sandbox:` section), `executor`
(gateway side), `setup` (part hooks, layer status for doctor).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SANDBOX_UID = 1100
SANDBOX_GID = 1100


@dataclass(frozen=True)
class Profile:
    """Per-agent sandbox profile (docs/design.md "Policy" `sandbox:`), plus the per-call bounds."""

    cpu: float = 0.5                       # cores (aggregate for the agent)
    memory: int = 512 * 1024 * 1024        # bytes, no swap
    pids: int = 100
    io_read: int = 50 * 1000 * 1000        # bytes/s
    io_write: int = 25 * 1000 * 1000       # bytes/s
    tmpfs: int = 100 * 1024 * 1024         # bytes for /tmp
    seccomp: str = "default"               # default | strict
    egress: tuple[str, ...] = ()           # "host:port" / "cidr:port"; empty = no network
    timeout: float = 30.0                  # wall-clock seconds per call
    max_output_bytes: int = 1024 * 1024    # encoded result size cap

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["egress"] = list(self.egress)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        d = dict(d)
        d["egress"] = tuple(d.get("egress") or ())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def egress_ports(self) -> list[int]:
        """TCP ports named in the egress list (Landlock connect rules)."""
        ports: set[int] = set()
        for e in self.egress:
            port = str(e).rsplit(":", 1)[-1]
            if port.isdigit() and 0 < int(port) < 65536:
                ports.add(int(port))
        return sorted(ports)


@dataclass
class SandboxContext:
    """What an `execution: sandbox` implementation gets (inside the child)."""

    agent: str
    call_id: str
    capability: str
    profile: Profile
    deadline: float = 0.0                  # time.monotonic() at which the call is killed
    workspace: str = "/workspace"
    trash: str = "/trash"
    tmp: str = "/tmp"
    shared: str = "/shared"
    definitions: str = "/definitions"
    extra: dict[str, Any] = field(default_factory=dict)


__all__ = ["SANDBOX_GID", "SANDBOX_UID", "Profile", "SandboxContext"]
