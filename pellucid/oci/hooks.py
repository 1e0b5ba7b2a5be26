"""Run OCI hooks on the host, as runc does: in order, the container's state JSON on stdin.

A hook gets exactly the environment its ``env`` lists (none when absent), a process group of its
own so that a timeout kills everything it started, and its stdin and stderr in memory files, so
that neither a large state nor a child that outlives the hook can make the runtime hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from ..errors import HookError
from .bundle import hooks_of

__all__ = ["hooks_of", "run_hooks"]

STDERR_TAIL = 4096


def run_hooks(stage: str, hooks: list[dict], state: dict, cwd: str | None = None) -> None:
    """Run ``hooks`` (as :func:`hooks_of` returns them) in ``cwd`` (runc uses the bundle); the
    first that fails stops the rest."""
    data = json.dumps(state, separators=(",", ":")).encode()
    for i, hook in enumerate(hooks):
        failure = _run(hook, data, cwd)
        if failure:
            raise HookError(f"error running {stage} hook #{i}: {hook['path']}: {failure}")


def _run(hook: dict, state: bytes, cwd: str | None) -> str:
    """Why the hook failed, or "" if it succeeded."""
    path = hook["path"]
    # As runc (Go's exec with a nil Env): a hook without "env" inherits the runtime's environment.
    env = None if hook.get("env") is None else dict(var.split("=", 1) for var in hook["env"])
    timeout = hook.get("timeout")
    stdin = os.memfd_create("pellucid-hook-state")
    stderr = os.memfd_create("pellucid-hook-stderr")
    try:
        view = memoryview(state)
        while view:
            view = view[os.write(stdin, view):]
        os.lseek(stdin, 0, os.SEEK_SET)
        try:
            process = subprocess.Popen(hook.get("args") or [path], executable=path, env=env, cwd=cwd, stdin=stdin,
                                       stdout=subprocess.DEVNULL, stderr=stderr, process_group=0)
        except OSError as err:
            return (err.strerror or str(err)).lower()
        try:
            failure = _status(process.wait(timeout))
        except subprocess.TimeoutExpired:
            failure = f"hook ran past specified timeout of {timeout:.1f}s"
        finally:
            if process.returncode is None:
                _kill_group(process.pid)
                process.wait()
        tail = _tail(stderr)
        return f"{failure}, stderr: {tail}" if failure and tail else failure
    finally:
        os.close(stdin)
        os.close(stderr)


def _status(code: int) -> str:
    """A wait status as Go words it, which is what runc prints."""
    if code > 0:
        return f"exit status {code}"
    if code < 0:
        return f"signal: {(signal.strsignal(-code) or str(-code)).lower()}"
    return ""


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(fd: int) -> str:
    size = os.lseek(fd, 0, os.SEEK_END)
    data = os.pread(fd, STDERR_TAIL, max(0, size - STDERR_TAIL))
    return data.decode(errors="replace").strip()
