"""A sandbox is one VM: its directory, its monitor daemon, and the way to talk to it.

``<state dir of the sandbox container>/vm/`` holds vm.json (what to boot), monitor.sock, the
logs, ``shared/`` (exported to the guest over 9p; each container of the sandbox has a directory
there) and ``netns`` (the pinned network namespace, when pellucid made it). The monitor outlives
the command that starts it: the container's state records its pid and start time, and
:func:`stop` is the one way it is stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .. import messages, procs, sockets
from ..errors import VMError
from ..host_messages import MonitorReady, Share, VMDescription, VMInfo
from ..vm.agent_client import AgentClient
from . import cgroups
from .layout import MONITOR_SOCKET, shared_dir
from .ready import read_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence

DESCRIPTION = "vm.json"
LOG = "monitor.log"


class MonitorProcess:
    """A monitor just started; :meth:`wait_ready` waits until its VM's agent answers."""

    def __init__(self, vm_dir: str, proc: subprocess.Popen, ready_fd: int) -> None:
        self.vm_dir = vm_dir
        self._proc = proc
        self._ready_fd = ready_fd
        self.pid = proc.pid
        self.start = procs.proc_start_time(proc.pid) or 0  # our unreaped child: this is it

    def wait_ready(self, timeout: float) -> VMInfo:
        try:
            line = read_line(self._ready_fd, timeout)
        except TimeoutError:
            self._stop()
            raise VMError(f"the VM did not come up within {timeout:g}s" + _log_tail(self.vm_dir)) from None
        finally:
            os.close(self._ready_fd)
        if not line:
            self._stop()
            raise VMError("the VM monitor exited" + _log_tail(self.vm_dir))
        try:
            ready = MonitorReady.from_json(line)
        except ValueError as err:
            self._stop()
            raise VMError(f"the VM monitor reported garbage ({err})") from err
        if not ready.ok:
            self._stop()
            raise VMError(ready.error + _log_tail(self.vm_dir))
        return ready.info

    def _stop(self) -> None:
        stop(self.vm_dir, self.pid, self.start)
        self._proc.wait()


def launch(vm_dir: str, desc: VMDescription, cgroup: Sequence[str] = ()) -> MonitorProcess:
    """Write vm.json and start the monitor, which boots the VM; in the host cgroup directories
    ``cgroup`` from before it runs, so that QEMU, its child, is there too."""
    # Traversable by the guest's user-namespaced roots; local users are kept out by --root's 0700.
    os.makedirs(shared_dir(vm_dir), 0o711, exist_ok=True)
    desc.shares = [Share(tag=messages.SHARE_TAG, path=shared_dir(vm_dir))]
    with open(os.path.join(vm_dir, DESCRIPTION), "w") as f:
        f.write(desc.to_json())
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    try:
        with open(os.path.join(vm_dir, LOG), "ab") as log:
            proc = subprocess.Popen([*_monitor_argv(vm_dir), "--ready-fd", str(ready_w)],
                                    pass_fds=(ready_w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True,
                                    preexec_fn=(lambda: cgroups.join(cgroup)) if cgroup else None)
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(ready_w)
    return MonitorProcess(vm_dir, proc, ready_r)


def _log_tail(vm_dir: str) -> str:
    try:
        with open(os.path.join(vm_dir, LOG), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 1500))
            tail = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f" (monitor log: {tail})" if tail else ""


class MonitorConnection:
    """A client of the sandbox's monitor; its requests reach the guest agent."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client

    def call(self, request: messages.Request, timeout: float = 30.0) -> Any:
        return self._client.call(request, timeout=timeout)

    def close(self) -> None:
        self._client.sock.close()

    def __enter__(self) -> MonitorConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(vm_dir: str, timeout: float = 30.0) -> MonitorConnection:
    try:
        return MonitorConnection(AgentClient(sockets.connect(os.path.join(vm_dir, MONITOR_SOCKET), timeout=timeout)))
    except OSError as err:
        raise VMError(f"the VM is not running ({err.strerror or err})") from err


def stop(vm_dir: str, pid: int, start: int, timeout: float = 10.0, force: bool = False) -> None:
    """Shut the VM down: ask the monitor, then SIGTERM, then SIGKILL (QEMU dies with it); with
    ``force`` (a guest that is broken), SIGKILL at once. Idempotent; a monitor that is gone (or
    whose pid another process has now) is left alone. Without a pid (a ``create`` killed before it
    recorded one), the monitor of ``vm_dir`` is found by its command line."""
    monitors = [(pid, start)] if pid else procs.find(_monitor_argv(vm_dir)[1:])
    for pid, start in monitors:
        if force:
            procs.stop(pid, start, term=False, timeout=timeout)
        else:
            procs.stop(pid, start, ask=lambda: _shutdown(vm_dir, timeout), timeout=timeout)


def _monitor_argv(vm_dir: str) -> list[str]:
    return [sys.executable, "-m", "pellucid.monitor", vm_dir]


def _shutdown(vm_dir: str, timeout: float) -> None:
    with connect(vm_dir, timeout=2) as monitor:
        monitor.call(messages.Shutdown(), timeout=timeout)
