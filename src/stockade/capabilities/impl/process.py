"""process.run: run one command inside the per-call sandbox, bounded in time and output.

The command inherits every sandbox layer of the call (namespaces, cgroup, Landlock, seccomp,
the agent's netns). This handler adds what the layers cannot: a minimal environment (never the
gateway's), a cwd resolved beneath the workspace like any other path, a wall-clock timeout
shorter than the sandbox's own deadline (so partial output can still be reported), output caps
that keep draining the pipes (so a flood neither blocks the command nor grows memory), and a
new process group that is SIGKILLed as a whole on timeout and after the command exits (so
background children do not outlive the call).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from stockade.capabilities.paths import Resolver, Root
from stockade.capabilities.registry import implements
from stockade.core.errors import err

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT_S = 30.0
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ARGV_BYTES = 256 * 1024
MAX_ENV_BYTES = 64 * 1024
MAX_STDIN_BYTES = 1024 * 1024
TIMEOUT_TAIL_BYTES = 16 * 1024
_READ = 65536


def _profile(ctx: Any, name: str, default: Any) -> Any:
    prof = getattr(ctx, "profile", None)
    if isinstance(prof, dict):
        return prof.get(name, default)
    return getattr(prof, name, default) if prof is not None else default


def effective_timeout(requested: float | None, profile_timeout: float, deadline_left: float | None) -> float:
    """Pure: the command's own timeout, always inside the sandbox's call deadline.

    Leaves a margin (10 %, at most 1 s) for killing the group and returning partial output.
    """
    hard = float(profile_timeout)
    if deadline_left is not None:
        hard = min(hard, deadline_left)
    margin = min(1.0, max(0.05, hard * 0.1))
    cap = max(0.05, hard - margin)
    if requested is None:
        return min(DEFAULT_TIMEOUT_S, cap)
    return max(0.05, min(float(requested), cap))


def build_env(ctx: Any, user_env: dict[str, Any] | None, cwd_display: str) -> dict[str, str]:
    """A minimal environment plus the agent's variables; nothing from the gateway's."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": "/workspace",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "USER": str(getattr(ctx, "agent", "agent")),
        "LOGNAME": str(getattr(ctx, "agent", "agent")),
        "PWD": cwd_display,
    }
    total = 0
    for k, v in (user_env or {}).items():
        if not isinstance(k, str) or not ENV_NAME.match(k):
            raise err("InvalidInput", f"invalid environment variable name {str(k)[:60]!r}")
        if not isinstance(v, str) or "\x00" in v:
            raise err("InvalidInput", f"environment variable {k} must be a string without NUL bytes")
        total += len(k) + len(v.encode("utf-8", "surrogatepass")) + 2
        env[k] = v
    if total > MAX_ENV_BYTES:
        raise err("InvalidInput", f"environment larger than {MAX_ENV_BYTES} bytes")
    return env


def _check_argv(argv: Any) -> list[str]:
    if not isinstance(argv, list) or not argv:
        raise err("InvalidInput", "argv must be a non-empty list of strings")
    total = 0
    for a in argv:
        if not isinstance(a, str):
            raise err("InvalidInput", "argv must contain only strings")
        if "\x00" in a:
            raise err("InvalidInput", "argv entries must not contain NUL bytes")
        try:
            total += len(a.encode("utf-8")) + 1
        except UnicodeEncodeError:
            raise err("InvalidInput", "argv entries must be valid Unicode") from None
    if total > MAX_ARGV_BYTES:
        raise err("InvalidInput", f"argv larger than {MAX_ARGV_BYTES} bytes")
    if not argv[0]:
        raise err("InvalidInput", "argv[0] (the command) is empty")
    return list(argv)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's whole process group.

    One group kill reaches every member (fork() checks for a pending fatal signal, so a member
    that is forking cannot slip a child past it); a few repeats are belt and braces. Members that
    are already zombies keep the group "alive" for kill(), so success is not waited out. The
    leader is reaped through `proc.poll()` so its exit status is kept; other members only become
    our zombies when we are the pid namespace's init, and are reaped here then.
    """
    pgid = proc.pid
    for _ in range(3):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        proc.poll()
        if proc.returncode is not None:
            with contextlib.suppress(ChildProcessError, OSError):
                while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
                    pass
        try:
            os.killpg(pgid, 0)   # the group is empty (all reaped): the next kill would find nothing
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.002)


class _Stream:
    def __init__(self, cap: int):
        self.cap = cap
        self.buf = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.buf)
        if room > 0:
            self.buf += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.buf)

    def text(self, limit: int | None = None) -> str:
        b = bytes(self.buf if limit is None else self.buf[-limit:])
        return b.decode("utf-8", "replace")


@dataclass
class _Plan:
    """A checked process.run request: what to run, where, with what, for how long."""

    argv: list[str]
    stdin: bytes | None          # None: the command's stdin is /dev/null
    timeout: float               # the command's own, inside the sandbox's deadline
    cap: int                     # bytes kept of stdout and of stderr each
    env: dict[str, str]
    cwd_fd: int                  # the resolved cwd (an fd: no path re-lookup, no race)


def _parse_stdin(stdin: Any) -> bytes | None:
    if stdin is None:
        return None
    if not isinstance(stdin, str):
        raise err("InvalidInput", "stdin must be a string")
    data = stdin.encode("utf-8", "replace")
    if len(data) > MAX_STDIN_BYTES:
        raise err("InvalidInput", f"stdin larger than {MAX_STDIN_BYTES} bytes")
    return data


def _timeout(ctx: Any, requested: Any) -> float:
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, (int, float))
                                  or requested <= 0):
        raise err("InvalidInput", "timeout must be a positive number of seconds")
    deadline = getattr(ctx, "deadline", 0.0) or 0.0
    left = deadline - time.monotonic() if deadline else None
    return effective_timeout(requested, float(_profile(ctx, "timeout", 30.0)), left)


def _open_cwd(ctx: Any, cwd: Any) -> tuple[int, str]:
    """The cwd resolved beneath the workspace (or /tmp, /shared) like any other path."""
    roots = [Root("/workspace", ctx.workspace, True), Root("/tmp", getattr(ctx, "tmp", "/tmp"), True)]
    shared = getattr(ctx, "shared", None)
    if shared and os.path.isdir(shared):
        roots.append(Root("/shared", shared, False))
    with Resolver(roots) as res:
        cwd_t = res.parse(cwd)
        return res.open(cwd_t, os.O_RDONLY | os.O_DIRECTORY), cwd_t.display


def _not_found(prog: str, path: str) -> Exception:
    return err("FileNotFound", f"command not found: {prog[:200]}",
               [{"action": "check_command", "description": "Use a command installed in the sandbox "
                 "(PATH is " + path[:300] + ") or an absolute path."}],
               command=prog[:200], reason="command_not_found")


def _plan(ctx: Any, args: dict[str, Any]) -> _Plan:
    """Stage 1: check every argument; resolve the cwd and the environment; find the program."""
    argv = _check_argv(args.get("argv"))
    stdin = _parse_stdin(args.get("stdin"))
    timeout = _timeout(ctx, args.get("timeout"))
    # stdout + stderr + JSON overhead must fit the sandbox's result cap.
    cap = max(1024, (int(_profile(ctx, "max_output_bytes", 1024 * 1024)) - 4096) // 3)
    cwd_fd, cwd_display = _open_cwd(ctx, args.get("cwd", "."))
    try:
        env = build_env(ctx, args.get("env"), cwd_display)
        prog = argv[0]
        if "/" not in prog and shutil.which(prog, path=env.get("PATH", "")) is None:
            raise _not_found(prog, env.get("PATH", ""))
    except BaseException:
        os.close(cwd_fd)
        raise
    return _Plan(argv, stdin, timeout, cap, env, cwd_fd)


def _spawn(plan: _Plan) -> subprocess.Popen[bytes]:
    """Stage 2: start the command in its own session, in the resolved cwd. Closes `cwd_fd`."""
    prog = plan.argv[0]
    saved = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(plan.cwd_fd)   # the child inherits our cwd
        return subprocess.Popen(  # noqa: S603 - argv is the agent's command, run inside the sandbox
            plan.argv, stdin=subprocess.PIPE if plan.stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=plan.env, close_fds=True,
            start_new_session=True, restore_signals=True)
    except FileNotFoundError:
        raise err("FileNotFound", f"command not found: {prog[:200]}", command=prog[:200],
                  reason="command_not_found") from None
    except PermissionError:
        # Not executable, a noexec mount, or a sandbox profile (seccomp strict) without exec/fork.
        raise err("PathDenied", f"not allowed to execute {prog[:200]} (not executable, or this agent's "
                  "sandbox profile does not allow running commands)", command=prog[:200]) from None
    except OSError as e:
        raise _spawn_error(e, prog) from None
    finally:
        os.fchdir(saved)
        os.close(saved)
        os.close(plan.cwd_fd)


def _spawn_error(e: OSError, prog: str) -> Exception:
    if e.errno in (errno.EAGAIN, errno.ENOMEM):
        res_name = "pids" if e.errno == errno.EAGAIN else "memory"
        return err("ResourceExhausted", f"could not start the command ({e.strerror})", resource=res_name)
    if e.errno == errno.E2BIG:
        return err("InvalidInput", "argv and environment too large")
    if e.errno == errno.ENOEXEC:
        return err("InvalidInput", f"{prog[:200]} is not an executable format")
    return err("Internal", f"could not start the command ({e.strerror})")


class _Pump:
    """Stage 3: feed stdin and drain stdout/stderr (capped, never blocking) until the command and
    its pipes are done or the timeout passes."""

    def __init__(self, proc: subprocess.Popen[bytes], plan: _Plan, t0: float):
        self.proc = proc
        self.out, self.errs = _Stream(plan.cap), _Stream(plan.cap)
        self.pending = memoryview(plan.stdin or b"")
        self.end = t0 + plan.timeout
        self.sel = selectors.DefaultSelector()
        assert proc.stdout is not None and proc.stderr is not None  # noqa: S101 - both are PIPE
        for f, s in ((proc.stdout, self.out), (proc.stderr, self.errs)):
            os.set_blocking(f.fileno(), False)
            self.sel.register(f.fileno(), selectors.EVENT_READ, s)
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            if self.pending:
                self.sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, None)
            else:
                proc.stdin.close()

    def run(self) -> bool:
        """True if the command timed out."""
        proc = self.proc
        exited_at: float | None = None
        while self.sel.get_map():
            now = time.monotonic()
            if now >= self.end:
                return proc.poll() is None
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                _kill_group(proc)   # background children must not keep the pipes open
            for key, _ in self.sel.select(timeout=min(0.05 if exited_at is None else 0.01, self.end - now)):
                self._write_stdin(key.fd) if key.data is None else self._read(key.fd, key.data)
            if exited_at is not None and time.monotonic() - exited_at > 1.0:
                break   # something outside our group holds the pipes; stop waiting
        if proc.poll() is None:
            # The command closed its output but is still running: wait for it up to the timeout.
            try:
                proc.wait(timeout=max(0.0, self.end - time.monotonic()))
            except subprocess.TimeoutExpired:
                return True
        return False

    def _write_stdin(self, fd: int) -> None:
        try:
            n = os.write(fd, self.pending[:_READ])
            self.pending = self.pending[n:]
        except BlockingIOError:
            return
        except OSError:      # EPIPE: the command does not read its input
            self.pending = self.pending[:0]
        if not self.pending:
            self.sel.unregister(fd)
            assert self.proc.stdin is not None  # noqa: S101 - registered only with a stdin pipe
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def _read(self, fd: int, stream: _Stream) -> None:
        try:
            chunk = os.read(fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            stream.feed(chunk)
        else:
            self.sel.unregister(fd)

    def close(self) -> None:
        """Stage 4: whatever happened, the group is killed, the leader reaped, the pipes closed."""
        self.sel.close()
        _kill_group(self.proc)
        with contextlib.suppress(subprocess.TimeoutExpired):   # unkillable (D state): give up
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def _outcome(ctx: Any, pump: _Pump, timeout: float, timed_out: bool, duration_ms: int) -> dict[str, Any]:
    """Stage 5: the result (or Timeout with the tails of the output)."""
    out, errs, rc = pump.out, pump.errs, pump.proc.returncode
    if timed_out:
        raise err("Timeout", f"the command did not finish within {timeout:g} s; it and its children were killed",
                  [{"action": "raise_timeout", "description": "Pass a larger timeout (up to the sandbox profile's), "
                    "or split the work into shorter commands."}],
                  timeout_s=round(timeout, 3), duration_ms=duration_ms,
                  stdout_tail=out.text(TIMEOUT_TAIL_BYTES), stderr_tail=errs.text(TIMEOUT_TAIL_BYTES))
    result = {
        "exit_code": rc if rc is not None and rc >= 0 else None,
        "signal": -rc if rc is not None and rc < 0 else None,
        "stdout": out.text(),
        "stderr": errs.text(),
        "stdout_truncated": out.truncated,
        "stderr_truncated": errs.truncated,
        "stdout_bytes": out.total,
        "stderr_bytes": errs.total,
        "duration_ms": duration_ms,
        "timeout_s": round(timeout, 3),
    }
    return fit_output(result, int(_profile(ctx, "max_output_bytes", 1024 * 1024)) - 1024)


@implements("process.run")
def process_run(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Check, spawn, pump, reap, report: one stage each."""
    plan = _plan(ctx, args)
    t0 = time.monotonic()
    proc = _spawn(plan)
    try:
        pump = _Pump(proc, plan, t0)
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    try:
        timed_out = pump.run()
    finally:
        pump.close()
    return _outcome(ctx, pump, plan.timeout, timed_out, int((time.monotonic() - t0) * 1000))


def fit_output(result: dict[str, Any], budget: int) -> dict[str, Any]:
    """Pure: shrink stdout/stderr until the JSON encoding fits `budget` (escapes can grow text)."""
    while len(json.dumps(result)) > budget:
        key = "stdout" if len(result["stdout"]) >= len(result["stderr"]) else "stderr"
        if not result[key]:
            break
        result[key] = result[key][: len(result[key]) // 2]
        result[f"{key}_truncated"] = True
    return result
