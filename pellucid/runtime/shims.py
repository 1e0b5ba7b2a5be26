"""Starting a shim and handing it its request; the runtime's side of pellucid.shim.

The shim forwards SIGTERM to the container process, so it is never stopped with SIGTERM: before
its request it is asked to go by closing its request pipe, then killed.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .. import procs
from ..errors import ContainerError
from ..host_messages import ShimReady, ShimRequest
from . import cgroups
from . import netns as netns_mod
from .ready import read_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Sequence

ABORT_TIMEOUT = 5.0


class ShimHandle:
    """A shim started and waiting for its request (it is already in the container's netns)."""

    def __init__(self, netns: str | None, console: bool = False, cgroup: Sequence[str] = ()) -> None:
        if netns:
            netns_mod.check(netns)
        req_r, self._req_w = os.pipe2(os.O_CLOEXEC)
        self._ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        argv = [sys.executable, "-m", "pellucid.shim", str(req_r), str(ready_w)]
        # The pipes or FIFOs the caller gave the runtime are the process's stdio, unless its terminal
        # goes to a console socket: then they must not be held open (containerd reads them to EOF).
        stdio = subprocess.DEVNULL if console else None
        try:
            # The shim is in the container's network namespace and the VM's host cgroup before its
            # pid is known to anyone (prestart hooks, Docker's among them, find the namespace
            # through it; containerd and conmon read the cgroup of the pid for stats).
            self.proc = subprocess.Popen(argv, pass_fds=(req_r, ready_w), close_fds=True, stdin=stdio,
                                         stdout=stdio, stderr=stdio,
                                         preexec_fn=(lambda: _enter(netns, cgroup)) if netns or cgroup else None)
        except subprocess.SubprocessError as err:
            os.close(self._req_w)
            os.close(self._ready_r)
            raise ContainerError(f"cannot start the shim in network namespace {netns} and cgroup "
                                 f"{cgroup[0] if cgroup else '-'}: {err}") from err
        finally:
            os.close(req_r)
            os.close(ready_w)
        self.pid = self.proc.pid
        self.start = procs.proc_start_time(self.pid) or 0  # our unreaped child: this is it

    def send(self, request: ShimRequest, timeout: float) -> ShimReady:
        """Give the shim its request; return what it reports once the process exists in the VM."""
        data = request.to_json().encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._req_w, view):]
        except OSError as err:
            raise ContainerError(f"the shim died before its request: {err.strerror}") from err
        finally:
            os.close(self._req_w)
            self._req_w = -1
        line = self._read_ready(timeout)
        if not line:
            raise ContainerError("the shim exited without starting the process")
        try:
            ready = ShimReady.from_json(line)
        except ValueError as err:
            raise ContainerError(f"the shim reported garbage ({err})") from err
        if not ready.ok:
            raise ContainerError(ready.error or "the process could not be started")
        return ready

    def _read_ready(self, timeout: float) -> bytes:
        try:
            return read_line(self._ready_r, timeout)
        except TimeoutError:
            raise ContainerError(f"the process was not started within {timeout:g}s") from None
        finally:
            os.close(self._ready_r)
            self._ready_r = -1

    def abort(self) -> None:
        """Stop a shim whose container could not be set up: before its request, closing the
        request pipe makes it exit; after, it is relaying, and only SIGKILL is safe."""
        waiting = self._req_w >= 0
        procs.stop(self.pid, self.start, ask=self._close_pipes if waiting else None, term=False,
                   timeout=ABORT_TIMEOUT)
        self._close_pipes()
        self.proc.wait()

    def _close_pipes(self) -> None:
        for fd in (self._req_w, self._ready_r):
            if fd >= 0:
                os.close(fd)
        self._req_w = self._ready_r = -1

    def wait(self) -> int:
        return self.proc.wait()


def _enter(netns: str | None, cgroup: Sequence[str]) -> None:
    """In the shim's child, before exec."""
    if cgroup:
        cgroups.join(cgroup)
    if netns:
        netns_mod.enter(netns)


def stop(pid: int, start: int, grace: float = 0.0) -> None:
    """Stop a container's shim that is relaying (delete): SIGKILL, never SIGTERM, which it would
    forward to the workload; after ``grace`` seconds for it to exit on its own (its VM stopped)."""
    if grace > 0:
        procs.stop(pid, start, ask=lambda: None, term=False, timeout=grace)
    else:
        procs.stop(pid, start, term=False)


def write_pid_file(path: str, pid: int) -> None:
    """Atomically, as runc does: containerd reads it as soon as the command returns."""
    if not path:
        return
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)
