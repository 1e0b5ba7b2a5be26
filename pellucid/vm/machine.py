"""One QEMU process: started with its channels already connected, stopped soft then hard,
never left behind (it dies with its parent too)."""

from __future__ import annotations

import ctypes
import enum
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace

from .. import messages, procs, protocol
from ..errors import AgentError, VMError
from .agent_client import AgentClient
from .qemu_args import VMSpec, build_argv
from .qmp import QMP

PR_SET_PDEATHSIG = 1
LOG_TAIL = 4096


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: QEMU gets SIGKILL when its parent goes away.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class BootTimeline:
    """Milliseconds from QEMU's start: kernel entered and init reached (guest clock), handshake done."""

    kernel_ms: float
    init_ms: float
    agent_ms: float


class VM:
    """A QEMU process and its two channels. Use as a context manager: it always stops QEMU."""

    def __init__(self, spec: VMSpec, workdir: str) -> None:
        self.spec = spec
        self.workdir = workdir
        self.state = State.NEW
        self.proc: subprocess.Popen | None = None
        self.agent: AgentClient | None = None
        self.qmp: QMP | None = None
        self.hello: messages.HelloResult | None = None
        self.timeline: BootTimeline | None = None
        self._qmp_sock: socket.socket | None = None
        self._started = 0.0
        self._start_time = 0  # QEMU's, against pid reuse (pellucid.procs)

    @property
    def pid(self) -> int:
        """QEMU's pid; 0 before start."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "qemu.log")

    def start(self) -> None:
        if self.state is not State.NEW:
            raise VMError(f"VM already {self.state.value}")
        agent_host, agent_qemu = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        qmp_host, qmp_qemu = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = replace(self.spec, agent_fd=agent_qemu.fileno(), qmp_fd=qmp_qemu.fileno(),
                       pidfile=os.path.join(self.workdir, "qemu.pid"))
        argv = build_argv(spec)
        try:
            with open(self.log_path, "ab") as log:
                self._started = time.monotonic()
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             pass_fds=(agent_qemu.fileno(), qmp_qemu.fileno(),
                                                       *(n.fd for n in spec.nics if n.fd >= 0)),
                                             preexec_fn=_die_with_parent)
        except OSError as err:
            agent_host.close()
            qmp_host.close()
            raise VMError(f"cannot start {argv[0]}: {err}") from err
        finally:
            agent_qemu.close()
            qmp_qemu.close()
        self._start_time = procs.proc_start_time(self.proc.pid) or 0  # our unreaped child: this is it
        self.state = State.RUNNING
        self.agent = AgentClient(agent_host)
        self._qmp_sock = qmp_host

    def handshake(self, timeout: float, *, template: bool = False) -> messages.HelloResult:
        """Wait for the agent to answer; raises VMError with QEMU's and the console's output if it does not.
        A ``template``'s agent readies itself to be saved and cloned (and reads no boot id)."""
        assert self.agent is not None
        try:
            self.hello = self.agent.call(messages.Hello(protocol.VERSION, time.time_ns(), template=template),
                                         timeout=timeout)
        except (VMError, AgentError, OSError) as err:
            raise VMError(f"the VM did not come up: {err}{self._diagnostics()}", self.console()) from err
        done = time.monotonic()
        if self.hello.version != protocol.VERSION:
            raise VMError(f"agent speaks protocol {self.hello.version}, host {protocol.VERSION}")
        agent_ms = (done - self._started) * 1000
        kernel_ms = max(0.0, agent_ms - self.hello.uptime_ms)
        self.timeline = BootTimeline(kernel_ms=kernel_ms, init_ms=kernel_ms + self.hello.init_ms, agent_ms=agent_ms)
        return self.hello

    def monitor(self) -> QMP:
        if self.qmp is None:
            assert self._qmp_sock is not None
            self.qmp = QMP(self._qmp_sock)
        return self.qmp

    def console(self) -> str:
        """The tail of the guest's serial console (bounded)."""
        if self.spec.console_file:
            return _tail(self.spec.console_file)
        if self.proc is None or self.proc.poll() is not None:
            return ""
        try:
            text = self.monitor().execute("ringbuf-read", device="console", size=65536, format="utf8")
        except (VMError, OSError):
            return ""
        return text[-LOG_TAIL:] if isinstance(text, str) else ""

    def _diagnostics(self) -> str:
        parts = []
        if self.proc is not None and self.proc.poll() is not None:
            parts.append(f"QEMU exited with status {self.proc.returncode}")
        log = _tail(self.log_path).strip()
        if log:
            parts.append("QEMU said: " + log[-1000:])
        return ("; " + "; ".join(parts)) if parts else ""

    def stop(self, timeout: float = 3.0) -> None:
        """QMP quit, then SIGTERM, then SIGKILL; the channels are closed whatever happens."""
        if self.state is State.STOPPED:
            return
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    procs.stop(self.proc.pid, self._start_time, ask=lambda: self.monitor().execute("quit"),
                               timeout=timeout)
                self.proc.wait()
        finally:
            if self.agent is not None:
                self.agent.sock.close()
            if self._qmp_sock is not None:
                self._qmp_sock.close()
            self.state = State.STOPPED

    def __enter__(self) -> "VM":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: str, limit: int = LOG_TAIL) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
