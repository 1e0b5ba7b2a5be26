"""Starting a shim and handing it its request; the runtime's side of pellucid.shim."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from ..errors import ContainerError
from . import netns as netns_mod
from .ready import read_line


class ShimHandle:
    """A shim started and waiting for its request (it is already in the container's netns)."""

    def __init__(self, netns: str | None, console: bool = False) -> None:
        if netns:
            netns_mod.check(netns)
        req_r, self._req_w = os.pipe2(os.O_CLOEXEC)
        self._ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        argv = [sys.executable, "-m", "pellucid.shim", str(req_r), str(ready_w)]
        # The pipes or FIFOs the caller gave the runtime are the process's stdio, unless its terminal
        # goes to a console socket: then they must not be held open (containerd reads them to EOF).
        stdio = subprocess.DEVNULL if console else None
        try:
            # The shim is in the container's network namespace before its pid is known to anyone
            # (prestart hooks, Docker's among them, find the namespace through it).
            self.proc = subprocess.Popen(argv, pass_fds=(req_r, ready_w), close_fds=True, stdin=stdio,
                                         stdout=stdio, stderr=stdio,
                                         preexec_fn=(lambda: netns_mod.enter(netns)) if netns else None)
        except subprocess.SubprocessError as err:
            os.close(self._req_w)
            os.close(self._ready_r)
            raise ContainerError(f"cannot start the shim in network namespace {netns}: {err}") from None
        finally:
            os.close(req_r)
            os.close(ready_w)
        self.pid = self.proc.pid

    def send(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Give the shim its request; return what it reports once the process exists in the VM."""
        data = json.dumps(request).encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._req_w, view):]
        except OSError as err:
            raise ContainerError(f"the shim died before its request: {err.strerror}") from None
        finally:
            os.close(self._req_w)
            self._req_w = -1
        line = self._read_ready(timeout)
        if not line:
            raise ContainerError("the shim exited without starting the process")
        try:
            report = json.loads(line)
        except ValueError:
            raise ContainerError("the shim reported garbage") from None
        if not report.get("ok"):
            raise ContainerError(str(report.get("error", "the process could not be started")))
        return report

    def _read_ready(self, timeout: float) -> bytes:
        try:
            return read_line(self._ready_r, timeout)
        except TimeoutError:
            raise ContainerError(f"the process was not started within {timeout:g}s") from None
        finally:
            os.close(self._ready_r)
            self._ready_r = -1

    def abort(self) -> None:
        """Stop a shim whose container could not be set up."""
        for fd in (self._req_w, self._ready_r):
            if fd >= 0:
                os.close(fd)
        self._req_w = self._ready_r = -1
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def write_pid_file(path: str, pid: int) -> None:
    """Atomically, as runc does: containerd reads it as soon as the command returns."""
    if not path:
        return
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)
