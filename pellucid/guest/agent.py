"""The guest agent: PID 1 of the VM. Serves the host's requests over one virtio-serial port.

One thread, one selector loop: the channel to the host, the stdio of container processes and
a self-pipe for SIGCHLD all go through it, so no lock is needed anywhere.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import sys
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time: see protocol.py
    from typing import Any, Callable

from .. import protocol
from . import boot

PORTS_DIR = "/sys/class/virtio-ports"

TICK_SECONDS = 0.5


class AgentError(Exception):
    """A request failed; ``kind`` is a short machine-readable word for the host."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def find_port(name: str, timeout: float = 10.0) -> str:
    """The /dev node of the virtio-serial port called ``name``."""
    deadline = time.monotonic() + timeout
    while True:
        for port in sorted(os.listdir(PORTS_DIR)) if os.path.isdir(PORTS_DIR) else ():
            try:
                with open(f"{PORTS_DIR}/{port}/name") as f:
                    if f.read().strip() == name:
                        return f"/dev/{port}"
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"virtio-serial port {name} not found")
        time.sleep(0.01)


class Agent:
    def __init__(self, fd: int, started_ms: int = 0) -> None:
        self.fd = fd
        self.started_ms = started_ms  # when PID 1's Python reached the agent's code
        self.selector = selectors.DefaultSelector()
        self.reader = protocol.FrameReader()
        self.out = bytearray()
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {"hello": self.hello, "ping": self.ping}
        self.stream_handlers: dict[int, Callable[[bytes], None]] = {}
        self.child_handlers: dict[int, Callable[[int], None]] = {}
        self.on_tick: list[Callable[[], None]] = []
        self.selector.register(fd, selectors.EVENT_READ, self._on_channel)
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_signal)

    # Sending.

    def send(self, data: bytes) -> None:
        self.out += data
        self.selector.modify(self.fd, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_channel)

    def emit(self, name: str, **fields: Any) -> None:
        self.send(protocol.event(name, **fields))

    # The loop.

    def run(self) -> None:
        # Children are reaped only here, never while a handler waits for its own subprocess.
        while True:
            for key, mask in self.selector.select(TICK_SECONDS if self.on_tick else None):
                key.data(mask)
            for tick in self.on_tick:
                tick()

    def _on_channel(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and self.out:
            try:
                n = os.write(self.fd, self.out)
                del self.out[:n]
            except BlockingIOError:
                pass
            except OSError as err:
                if err.errno not in (errno.EPIPE, errno.ENODEV):
                    raise
            if not self.out:
                self.selector.modify(self.fd, selectors.EVENT_READ, self._on_channel)
        if mask & selectors.EVENT_READ:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                # The host end is not connected: drop any half frame and wait for it to come back.
                self.reader = protocol.FrameReader()
                time.sleep(0.05)
                return
            try:
                for frame in self.reader.feed(data):
                    self._dispatch(frame)
            except protocol.ProtocolError as err:
                print(f"pellucid-agent: protocol error from host: {err}", file=sys.stderr)
                self.reader = protocol.FrameReader()

    def _dispatch(self, frame: protocol.Frame) -> None:
        if frame.kind == protocol.STREAM:
            handler = self.stream_handlers.get(frame.id)
            if handler is not None:
                handler(frame.payload)
            return
        if frame.kind != protocol.REQUEST:
            return
        try:
            msg = frame.json()
            op = protocol.field(msg, "op", str, max_len=64)
            args = protocol.field(msg, "args", dict, optional=True, default={}, max_len=1 << 20)
            handler = self.handlers.get(op)
            if handler is None:
                raise AgentError("unsupported", f"unknown operation {op!r}")
            result = handler(args)
        except AgentError as err:
            self.send(protocol.response_error(frame.id, err.kind, str(err)))
        except protocol.ProtocolError as err:
            self.send(protocol.response_error(frame.id, "invalid", str(err)))
        except OSError as err:
            self.send(protocol.response_error(frame.id, "os", str(err)))
        else:
            self.send(protocol.response_ok(frame.id, result))

    def _on_signal(self, mask: int) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handler = self.child_handlers.pop(pid, None)
            if handler is not None:
                handler(os.waitstatus_to_exitcode(status))

    # Requests.

    def hello(self, args: dict[str, Any]) -> dict[str, Any]:
        version = protocol.field(args, "version", int)
        if version != protocol.VERSION:
            raise AgentError("version", f"host speaks protocol {version}, agent {protocol.VERSION}")
        host_time = protocol.field(args, "time_ns", int, optional=True)
        if host_time is not None:
            time.clock_settime_ns(time.CLOCK_REALTIME, host_time)
        if protocol.field(args, "template", bool, optional=True, default=False):
            # A template is saved after this answer and cloned: the kernel makes the boot id at its first
            # read, so it is read in each clone (clone_resumed), never here.
            from . import clone
            clone.warm_up()
            boot_id = ""
        else:
            boot_id = read_boot_id()
        return {
            "version": protocol.VERSION,
            "kernel": os.uname().release,
            "boot_id": boot_id,
            "rootfs_dax": boot.root_is_dax(),
            "init_ms": self.started_ms,
            "uptime_ms": boot.uptime_ms(),
        }

    def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"uptime_ms": boot.uptime_ms()}


def read_boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def main() -> None:
    started_ms = boot.uptime_ms()
    boot.mount_base()
    fd = os.open(find_port(protocol.AGENT_PORT_NAME), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    agent = Agent(fd, started_ms)
    from . import clone, network
    from .containers import Containers
    network.loopback_up()
    agent.handlers["configure_network"] = lambda args: network.configure(agent, args)
    agent.handlers["clone_resumed"] = lambda args: clone.resumed(agent, args)
    Containers(agent)
    agent.run()
