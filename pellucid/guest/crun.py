"""crun, which carries out each container's OCI config inside the VM: running it and reading its
errors (from its JSON log, bounded)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from .. import messages
from .agent import AgentError

BINARY = "/usr/bin/crun"
ROOT = "/run/crun"


def run(*args: str, stdio: tuple[int, int, int] | None = None, timeout: float = 60.0,
        console: socket.socket | None = None) -> tuple[subprocess.Popen, int | None]:
    """Run crun; with ``console``, receive the pty master crun sends on it. Returns crun and that fd."""
    log = f"{messages.GUEST_RUN}/crun-{os.getpid()}-{time.monotonic_ns()}.log"
    argv = [BINARY, f"--root={ROOT}", f"--log=file:{log}", "--log-format=json", *args]
    if stdio is None:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    else:
        proc = subprocess.Popen(argv, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
    master = None
    try:
        if console is not None:
            console.settimeout(timeout)
            try:
                conn, _ = console.accept()
            except socket.timeout:
                conn = None
            if conn is not None:
                with conn:
                    _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
                    master = fds[0] if fds else None
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    message = _error(log, proc)
    if proc.returncode != 0:
        if master is not None:
            os.close(master)
        raise AgentError(messages.ERR_CRUN, message or f"crun {args[0]} failed with status {proc.returncode}")
    return proc, master


def _error(log: str, proc: subprocess.Popen) -> str:
    """What crun said was wrong: the error lines of its log, else its stderr."""
    lines = []
    try:
        with open(log) as f:
            for line in f.read(65536).splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("level") == "error":
                    lines.append(str(entry.get("msg", "")))
        os.unlink(log)
    except OSError:
        pass
    if not lines and proc.stderr is not None and proc.returncode:
        lines.append(proc.stderr.read(4096).decode(errors="replace").strip())
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()
    return "; ".join(lines)[:4000]


def output(*args: str) -> str:
    """The standard output of a crun command that only reports (``ps``)."""
    proc = subprocess.run([BINARY, f"--root={ROOT}", *args], capture_output=True, timeout=30)
    if proc.returncode != 0:
        raise AgentError(messages.ERR_CRUN, proc.stderr.decode(errors="replace").strip()[:4000])
    return proc.stdout.decode(errors="replace")
