"""A running QEMU that a process inherited across exec: the monitor boots its VM with the whole
boot path loaded (config, accelerator probe, templates, QEMU's command line), then execs a fresh
interpreter that only serves (pellucid.monitor), so that none of that code stays resident for the
VM's life. QEMU stays the monitor's child (exec keeps children and their parent-death signal).

What the serving monitor needs of its VM is what :class:`pellucid.vm.machine.VM` gives it: the
agent's channel, whether QEMU has exited, and the stop that escalates from QMP ``quit``.
"""

from __future__ import annotations

import os
import socket

from .. import procs
from .agent_client import AgentClient
from .qmp import QMP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..host_messages import MonitorHandoff


class Child:
    """QEMU as the subset of ``subprocess.Popen`` the monitor uses: poll and wait on our child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped elsewhere: it is gone all the same
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self) -> int | None:
        return self._reap(0)


class AdoptedVM:
    """The VM a :class:`~pellucid.host_messages.MonitorHandoff` describes."""

    def __init__(self, handoff: MonitorHandoff) -> None:
        self.proc = Child(handoff.qemu_pid)
        self._start_time = handoff.qemu_start
        self.agent = AgentClient(socket.socket(fileno=handoff.agent_fd))
        for _ in self.agent.reader.feed(bytes.fromhex(handoff.agent_pending)):
            raise ValueError("the handoff's pending agent bytes hold a whole frame")
        self._qmp_sock = socket.socket(fileno=handoff.qmp_fd)
        self._qmp_pending = bytes.fromhex(handoff.qmp_pending)
        self._qmp_ready = handoff.qmp_ready
        self._stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _quit(self) -> None:
        qmp = (QMP.adopt(self._qmp_sock, self._qmp_pending) if self._qmp_ready else QMP(self._qmp_sock))
        qmp.execute("quit")

    def stop(self, timeout: float = 3.0) -> None:
        """As VM.stop: QMP quit, then SIGTERM, then SIGKILL; the channels are closed whatever happens."""
        if self._stopped:
            return
        try:
            if self.proc.poll() is None:
                procs.stop(self.proc.pid, self._start_time, ask=self._quit, timeout=timeout)
            self.proc.wait()
        finally:
            self.agent.sock.close()
            self._qmp_sock.close()
            self._stopped = True
