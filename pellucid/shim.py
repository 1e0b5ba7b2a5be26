"""The shim: the host process that stands for one container process (init or exec'd) in the VM.

Its pid is what --pid-file gets. It relays stdio (the pipes or FIFOs its caller gave the runtime,
or a terminal), forwards signals and window-size changes, and exits with the container process's
status (128+N for death by signal N), so containerd's shim and conmon see a runc-like process.

Run as ``python -m pellucid.shim REQUEST_FD READY_FD`` by the runtime (see
pellucid.runtime.shims): the request (JSON) names the monitor socket, the request that creates
the process and the terminal set-up.
"""

from __future__ import annotations

import fcntl
import os
import queue
import selectors
import signal
import struct
import sys
import termios
import threading
import tty
from typing import Any

from . import messages, protocol, sockets
from .host_messages import ShimReady, ShimRequest
from .vm.agent_client import parse_result

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2, signal.SIGCONT, signal.SIGTSTP, signal.SIGALRM)
VM_GONE_STATUS = 137  # the VM died under the process: report it as killed


class Output(threading.Thread):
    """One output stream of the process, written to the caller's fd in a thread of its own: a
    blocking write to a slow reader holds up neither signals nor the other stream. Each chunk's
    credit goes back once it is written, so the VM sends no more than a window ahead of the reader."""

    def __init__(self, shim: Shim, stream_id: int, fd: int, close_at_eof: bool) -> None:
        super().__init__(daemon=True)
        self.shim = shim
        self.stream_id = stream_id
        self.fd = fd
        self.close_at_eof = close_at_eof  # a terminal outlives the stream; pipes and FIFOs end with it
        self.chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def run(self) -> None:
        reader_gone = False
        while True:
            data = self.chunks.get()
            if not data:  # EOF: close ours so the reader sees it too
                if self.close_at_eof:
                    os.close(self.fd)
                return
            if not reader_gone:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self.fd, view):]
                except OSError:
                    reader_gone = True  # drop further output, as the process's writes keep succeeding
            try:
                self.shim.send(protocol.credit(self.stream_id, len(data)))
            except OSError:
                return  # the monitor is gone: the relay loop reports it


class Shim:
    def __init__(self, request: ShimRequest) -> None:
        self.request = request
        self.sock = sockets.connect(request.monitor, timeout=60)
        self.send_lock = threading.Lock()
        self.reader = protocol.FrameReader()
        self.process = 0
        self.status: int | None = None
        self.term_fd: int | None = None  # the terminal we relay (pty slave, or our own tty)
        self.term_saved: list | None = None
        self.out_fds = {protocol.STDOUT: 1, protocol.STDERR: 2}
        self.in_fd = 0
        self.outputs: dict[int, Output] = {}  # stream fd -> its writer
        self.stdin_window = protocol.Window()
        self.stdin_credit = threading.Condition()

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def setup_terminal(self) -> None:
        """With --console-socket: a new pty whose master goes to the caller, as runc does. With a
        terminal but no socket (an interactive `exec -t` or `run -t`): our own tty."""
        console_socket = self.request.console_socket
        if console_socket:
            master, slave = os.openpty()
            tty.setraw(slave)  # the guest's pty does the line discipline; this one passes bytes through
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)  # window-size changes on the master reach us as SIGWINCH
            sockets.send_fd(console_socket, master, os.ttyname(slave))
            os.close(master)
            self.term_fd = slave
        elif os.isatty(0):
            self.term_fd = 0
            self.term_saved = termios.tcgetattr(0)
            tty.setraw(0)
        if self.term_fd is not None:
            self.in_fd = self.term_fd
            self.out_fds = {protocol.STDOUT: self.term_fd if console_socket else 1}

    def create(self, request: messages.CreateContainer | messages.ExecProcess) -> messages.ProcessResult:
        """Send the request that creates our process; its answer names the process."""
        self.send(request.encode(1))
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the VM monitor closed the connection")
            for frame in self.reader.feed(data):
                if frame.kind == protocol.RESPONSE and frame.id == 1:
                    result: messages.ProcessResult = parse_result(frame, messages.ProcessResult)
                    return result

    def window_size(self) -> tuple[int, int]:
        assert self.term_fd is not None
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.term_fd, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, cols

    def resize(self) -> None:
        if self.term_fd is None or not self.process:
            return
        rows, cols = self.window_size()
        if rows and cols:
            self.send(messages.Resize(self.process, rows, cols).encode(2))

    def forward(self, signum: int) -> None:
        if self.process:
            self.send(messages.SignalProcess(self.process, int(signum)).encode(3))

    def pump_stdin(self) -> None:
        """Blocking reads in a thread (stdin may be a pipe, a FIFO, a file or a terminal), each no
        larger than the credit the agent has granted: what the process has not taken stays unread."""
        sid = protocol.stream_id(self.process, protocol.STDIN)
        try:
            while True:
                with self.stdin_credit:
                    while not self.stdin_window.available:
                        self.stdin_credit.wait()
                    size = min(self.stdin_window.available, protocol.MAX_STREAM_CHUNK)
                data = os.read(self.in_fd, size)
                if not data:
                    break
                with self.stdin_credit:
                    self.stdin_window.take(len(data))
                self.send(protocol.stream(sid, data))
            self.send(protocol.stream(sid, b""))
        except OSError:
            pass

    def stdin_granted(self, granted: int) -> None:
        with self.stdin_credit:
            self.stdin_window.grant(granted)
            self.stdin_credit.notify()

    def relay(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for sig in (*FORWARDED_SIGNALS, signal.SIGWINCH):
            signal.signal(sig, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for fd, target in self.out_fds.items():
            output = Output(self, protocol.stream_id(self.process, fd), target, close_at_eof=self.term_fd is None)
            output.start()
            self.outputs[fd] = output
        threading.Thread(target=self.pump_stdin, daemon=True).start()
        self.resize()
        sel = selectors.DefaultSelector()
        self.sock.setblocking(True)
        self.sock.settimeout(None)
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        sel.register(wake_r, selectors.EVENT_READ, "signal")
        for frame in self.reader.feed(b""):  # what arrived with the response that made the process
            self.handle(frame)
        while self.status is None:
            for key, _ in sel.select():
                if key.data == "signal":
                    for signum in os.read(wake_r, 64):
                        if signum == signal.SIGWINCH:
                            self.resize()
                        elif signum != signal.SIGPIPE:
                            self.forward(signum)
                    continue
                data = self.sock.recv(1 << 18)
                if not data:
                    return VM_GONE_STATUS
                for frame in self.reader.feed(data):
                    self.handle(frame)
        for output in self.outputs.values():  # the process's output ended before its exit was reported
            output.join()
        return self.status

    def handle(self, frame: protocol.Frame) -> None:
        if frame.kind in (protocol.STREAM, protocol.CREDIT):
            number, fd = protocol.split_stream_id(frame.id)
            if number != self.process:
                return
            if frame.kind == protocol.CREDIT and fd == protocol.STDIN:
                self.stdin_granted(protocol.parse_credit(frame))
            elif frame.kind == protocol.STREAM and fd in self.outputs:
                self.outputs[fd].chunks.put(frame.payload)
        elif frame.kind == protocol.EVENT:
            try:
                event = messages.read_event(frame.json())
            except protocol.ProtocolError:
                return  # the monitor passes on checked exit events only
            if isinstance(event, messages.Exit) and event.process == self.process:
                self.status = event.status

    def restore_terminal(self) -> None:
        if self.term_saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, self.term_saved)


def creating_request(op: str, args: dict[str, Any]) -> messages.CreateContainer | messages.ExecProcess:
    """The request the runtime gave the shim, checked before it goes to the guest."""
    if op == messages.CreateContainer.OP:
        return messages.CreateContainer.from_json(args)
    if op == messages.ExecProcess.OP:
        return messages.ExecProcess.from_json(args)
    raise protocol.ProtocolError(f"a shim creates a process; {op[:64]!r} does not")


def main(argv: list[str]) -> int:
    """argv: REQUEST_FD READY_FD. The runtime started the shim in the container's network namespace;
    it waits for its request, which the runtime sends once the VM is up."""
    request_fd, ready_fd = int(argv[0]), int(argv[1])
    with os.fdopen(request_fd, "rb") as f:
        raw = f.read(8 << 20)
    ready = os.fdopen(ready_fd, "w")
    if not raw:
        return 1  # the runtime gave up before sending a request
    shim = None
    try:
        request = ShimRequest.from_json(raw)
        shim = Shim(request)
        shim.setup_terminal()
        result = shim.create(creating_request(request.op, request.args))
        shim.process = result.process
    except Exception as err:  # reported to the runtime command, which fails with it
        ready.write(ShimReady(ok=False, error=str(err)).to_json() + "\n")
        ready.close()
        if shim is not None:
            shim.restore_terminal()
        return 1
    ready.write(ShimReady(ok=True, process=shim.process, guest_pid=result.pid).to_json() + "\n")
    ready.close()
    try:
        return shim.relay()
    finally:
        shim.restore_terminal()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
