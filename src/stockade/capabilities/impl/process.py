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


@implements("process.run")
def process_run(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    argv = _check_argv(args.get("argv"))
    stdin = args.get("stdin")
    stdin_b = b""
    if stdin is not None:
        if not isinstance(stdin, str):
            raise err("InvalidInput", "stdin must be a string")
        stdin_b = stdin.encode("utf-8", "replace")
        if len(stdin_b) > MAX_STDIN_BYTES:
            raise err("InvalidInput", f"stdin larger than {MAX_STDIN_BYTES} bytes")
    req_t = args.get("timeout")
    if req_t is not None and (isinstance(req_t, bool) or not isinstance(req_t, (int, float)) or req_t <= 0):
        raise err("InvalidInput", "timeout must be a positive number of seconds")
    deadline = getattr(ctx, "deadline", 0.0) or 0.0
    left = deadline - time.monotonic() if deadline else None
    timeout = effective_timeout(req_t, float(_profile(ctx, "timeout", 30.0)), left)
    # stdout + stderr + JSON overhead must fit the sandbox's result cap.
    cap = max(1024, (int(_profile(ctx, "max_output_bytes", 1024 * 1024)) - 4096) // 3)

    roots = [Root("/workspace", ctx.workspace, True), Root("/tmp", getattr(ctx, "tmp", "/tmp"), True)]
    shared = getattr(ctx, "shared", None)
    if shared and os.path.isdir(shared):
        roots.append(Root("/shared", shared, False))
    with Resolver(roots) as res:
        cwd_t = res.parse(args.get("cwd", "."))
        cwd_fd = res.open(cwd_t, os.O_RDONLY | os.O_DIRECTORY)
    env = build_env(ctx, args.get("env"), cwd_t.display)

    prog = argv[0]
    if "/" not in prog and shutil.which(prog, path=env.get("PATH", "")) is None:
        os.close(cwd_fd)
        raise err("FileNotFound", f"command not found: {prog[:200]}",
                  [{"action": "check_command", "description": "Use a command installed in the sandbox "
                    "(PATH is " + env.get("PATH", "")[:300] + ") or an absolute path."}],
                  command=prog[:200], reason="command_not_found")

    # The child inherits our cwd: chdir to the fd we resolved (no path re-lookup, no race).
    saved = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    t0 = time.monotonic()
    try:
        os.fchdir(cwd_fd)
        proc = subprocess.Popen(  # noqa: S603 - argv is the agent's command, run inside the sandbox
            argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True,
            start_new_session=True, restore_signals=True)
    except FileNotFoundError:
        raise err("FileNotFound", f"command not found: {prog[:200]}", command=prog[:200],
                  reason="command_not_found") from None
    except PermissionError:
        # Not executable, a noexec mount, or a sandbox profile (seccomp strict) without exec/fork.
        raise err("PathDenied", f"not allowed to execute {prog[:200]} (not executable, or this agent's "
                  "sandbox profile does not allow running commands)", command=prog[:200]) from None
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.ENOMEM):
            res_name = "pids" if e.errno == errno.EAGAIN else "memory"
            raise err("ResourceExhausted", f"could not start the command ({e.strerror})",
                      resource=res_name) from None
        if e.errno == errno.E2BIG:
            raise err("InvalidInput", "argv and environment too large") from None
        if e.errno == errno.ENOEXEC:
            raise err("InvalidInput", f"{prog[:200]} is not an executable format") from None
        raise err("Internal", f"could not start the command ({e.strerror})") from None
    finally:
        os.fchdir(saved)
        os.close(saved)
        os.close(cwd_fd)

    out, errs = _Stream(cap), _Stream(cap)
    timed_out = False
    sel = selectors.DefaultSelector()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for f, s in ((proc.stdout, out), (proc.stderr, errs)):
            os.set_blocking(f.fileno(), False)
            sel.register(f.fileno(), selectors.EVENT_READ, s)
        pending = memoryview(stdin_b)
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            if pending:
                sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, None)
            else:
                proc.stdin.close()
        end = t0 + timeout
        exited_at: float | None = None
        while sel.get_map():
            now = time.monotonic()
            if now >= end:
                timed_out = proc.poll() is None
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                _kill_group(proc)   # background children must not keep the pipes open
            for key, _ in sel.select(timeout=min(0.05 if exited_at is None else 0.01, end - now)):
                if key.data is None:     # stdin
                    try:
                        n = os.write(key.fd, pending[:_READ])
                        pending = pending[n:]
                    except BlockingIOError:
                        continue
                    except OSError:      # EPIPE: the command does not read its input
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(key.fd)
                        assert proc.stdin is not None
                        with contextlib.suppress(OSError):
                            proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, _READ)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fd)
            if exited_at is not None and time.monotonic() - exited_at > 1.0:
                break   # something outside our group holds the pipes; stop waiting
        if not timed_out and proc.poll() is None:
            # The command closed its output but is still running: wait for it up to the timeout.
            try:
                proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        sel.close()
        _kill_group(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):   # unkillable (D state): give up
            proc.wait(timeout=5)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
    duration_ms = int((time.monotonic() - t0) * 1000)
    rc = proc.returncode
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


def fit_output(result: dict[str, Any], budget: int) -> dict[str, Any]:
    """Pure: shrink stdout/stderr until the JSON encoding fits `budget` (escapes can grow text)."""
    while len(json.dumps(result)) > budget:
        key = "stdout" if len(result["stdout"]) >= len(result["stderr"]) else "stderr"
        if not result[key]:
            break
        result[key] = result[key][: len(result[key]) // 2]
        result[f"{key}_truncated"] = True
    return result
