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

from .. import messages, protocol
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
        # op -> (its request record, the handler that takes that record and returns the result record)
        self.handlers: dict[str, tuple[type[messages.Request], Callable[[Any], messages.Record | None]]] = {}
        self.stream_handlers: dict[int, Callable[[bytes], None]] = {}
        self.credit_handlers: dict[int, Callable[[int], None]] = {}  # stream id -> bytes granted
        self.child_handlers: dict[int, Callable[[int], None]] = {}
        # Called after every wake-up; each returns whether it wants another within TICK_SECONDS. An
        # idle guest sleeps until the host or a child wakes it: under TCG every wake-up costs CPU.
        self.on_tick: list[Callable[[], bool]] = []
        self.selector.register(fd, selectors.EVENT_READ, self._on_channel)
        self.handle(messages.Hello, self.hello)
        self.handle(messages.Ping, self.ping)

    def handle(self, request: type[messages.Request], handler: Callable[[Any], messages.Record | None]) -> None:
        """Serve ``request`` with ``handler``, which gets the request record, checked."""
        self.handlers[request.OP] = (request, handler)

    # Sending.

    def send(self, data: bytes) -> None:
        self.out += data
        self.selector.modify(self.fd, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_channel)

    def emit(self, event: messages.Event) -> None:
        self.send(event.encode())

    # The loop.

    def run(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(wake_r, selectors.EVENT_READ, lambda mask: self._on_signal(wake_r))
        # Children are reaped only here, never while a handler waits for its own subprocess.
        again = False
        while True:
            for key, mask in self.selector.select(TICK_SECONDS if again else None):
                key.data(mask)
            again = any([tick() for tick in self.on_tick])

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
        if frame.kind == protocol.CREDIT:
            granted = self.credit_handlers.get(frame.id)
            if granted is not None:
                granted(protocol.parse_credit(frame))
            return
        if frame.kind != protocol.REQUEST:
            return
        try:
            op, args = messages.read_request(frame.json())
            entry = self.handlers.get(op)
            if entry is None:
                raise AgentError(messages.ERR_UNSUPPORTED, f"unknown operation {op!r}")
            request, handler = entry
            result = handler(request.from_json(args))
        except AgentError as err:
            self.send(messages.Error(err.kind, str(err)).encode(frame.id))
        except protocol.ProtocolError as err:
            self.send(messages.Error(messages.ERR_INVALID, str(err)).encode(frame.id))
        except OSError as err:
            self.send(messages.Error(messages.ERR_OS, str(err)).encode(frame.id))
        else:
            self.send(messages.ok(frame.id, result))

    def _on_signal(self, wake_r: int) -> None:
        try:
            os.read(wake_r, 4096)
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

    def hello(self, request: messages.Hello) -> messages.HelloResult:
        if request.version != protocol.VERSION:
            raise AgentError(messages.ERR_VERSION, f"host speaks protocol {request.version}, agent {protocol.VERSION}")
        if request.time_ns is not None:
            time.clock_settime_ns(time.CLOCK_REALTIME, request.time_ns)
        if request.template:
            # A template is saved after this answer and cloned: the kernel makes the boot id at its first
            # read, so it is read in each clone (clone_resumed), never here.
            from . import clone
            clone.warm_up()
            return self.hello_result(boot_id="")
        return self.hello_result(boot_id=read_boot_id())

    def hello_result(self, boot_id: str) -> messages.HelloResult:
        return messages.HelloResult(version=protocol.VERSION, kernel=os.uname().release, boot_id=boot_id,
                                    rootfs_dax=boot.root_is_dax(), init_ms=self.started_ms,
                                    uptime_ms=boot.uptime_ms())

    def ping(self, request: messages.Ping) -> messages.PingResult:
        return messages.PingResult(uptime_ms=boot.uptime_ms())


def read_boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()
