"""Running client commands, the harness's errors, and waiting for a daemon to come up."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence


class HarnessError(Exception):
    """Root of the harness's errors: a client could not be set up or did not behave."""


class CommandError(HarnessError):
    """A client command exited non-zero; carries its argv and output."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{' '.join(self.argv)} exited {returncode}\n"
                         f"stdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}")


def run_cmd(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
            env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv, capture text output; raise CommandError on a non-zero exit if `check`."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=dict(env) if env is not None else None, input=input)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(argv, -1, out, err + f"\n(timed out after {timeout}s)") from None
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[Any] | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"{what}: process exited {proc.returncode}\n{tail(log) if log else ''}")
        time.sleep(0.1)
    raise HarnessError(f"{what}: not ready after {timeout}s\n{tail(log) if log else ''}")
