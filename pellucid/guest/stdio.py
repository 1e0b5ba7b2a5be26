"""The stdio of one container process, relayed over the agent's channel with per-stream flow
control (see "Flow control" in protocol.py): a process's output is read only as far as the host
has granted credit, so a slow reader on the host leaves the bytes in the process's pipe (and the
process blocks there, as it would under runc) while every other stream and request keeps moving;
stdin is granted back to the host as it is written into the process's pipe or pty.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import struct
import sys
import termios
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time: see protocol.py
    from typing import Callable

    from .agent import Agent

from .. import protocol

# After a process exits, its pipes may still be held open by children it left behind. Its exit is
# reported once its output reaches EOF, or once this long has passed with nothing left unread.
EXIT_DRAIN_SECONDS = 2.0


def unread(fd: int) -> int:
    """Bytes waiting in a pipe or pty master."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        return 0


class Stdio:
    """One process's streams: ``stdin`` (the write end of its stdin pipe, or the pty master) and
    ``outputs`` (read ends, fd -> protocol.STDOUT/STDERR; with a terminal, the pty master again).
    The fds must be non-blocking; they are closed by this object."""

    def __init__(self, agent: Agent, number: int, stdin: int, outputs: dict[int, int], tty: bool,
                 on_output_closed: Callable[[], None]) -> None:
        self.agent = agent
        self.number = number
        self.tty = tty
        self.stdin: int | None = stdin
        self.outputs = dict(outputs)
        self.pending_in = bytearray()  # from the host, not yet taken by the process (at most a window)
        self._stdin_eof = False  # the host closed stdin: close ours once pending_in is written
        self._windows = {stream: protocol.Window() for stream in outputs.values()}
        self._on_output_closed = on_output_closed
        self._masks: dict[int, int] = {}
        self._stdin_id = protocol.stream_id(number, protocol.STDIN)
        agent.stream_handlers[self._stdin_id] = self._from_host
        for stream in outputs.values():
            agent.credit_handlers[protocol.stream_id(number, stream)] = lambda n, s=stream: self._granted(s, n)
        for fd in outputs:
            self._watch(fd)

    @property
    def terminal(self) -> int | None:
        """The pty master, while it is open."""
        return self.stdin if self.tty else None

    def drained(self, exited_at: float) -> bool:
        """Whether the exit of the process may be reported (it must follow all its output)."""
        if not self.outputs:
            return True
        if time.monotonic() - exited_at < EXIT_DRAIN_SECONDS:
            return False
        # Bytes still unread are output the host has yet to take (its reader is slow): they come
        # first. Empty pipes held open by the process's children hold up the exit no longer.
        return not any(unread(fd) for fd in self.outputs)

    def close(self) -> None:
        """Close every stream (outputs end with an EOF frame), whatever is left unsent."""
        for fd in list(self.outputs):
            self._close_output(fd, notify=False)
        if self.stdin is not None:
            self._close_stdin()
        self.agent.stream_handlers.pop(self._stdin_id, None)

    # The selector: output fds are watched while their stream has credit, stdin while bytes wait.

    def _watch(self, fd: int) -> None:
        mask = 0
        if fd in self.outputs and self._windows[self.outputs[fd]].available:
            mask |= selectors.EVENT_READ
        if fd == self.stdin and self.pending_in:
            mask |= selectors.EVENT_WRITE
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        selector = self.agent.selector
        if not mask:
            selector.unregister(fd)
            del self._masks[fd]
            return
        if old:
            selector.modify(fd, mask, lambda m, fd=fd: self._ready(fd, m))
        else:
            selector.register(fd, mask, lambda m, fd=fd: self._ready(fd, m))
        self._masks[fd] = mask

    def _ready(self, fd: int, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and fd == self.stdin:
            self._flush_stdin()
        if mask & selectors.EVENT_READ and fd in self.outputs:
            self._read(fd)

    # Output: process -> host.

    def _read(self, fd: int) -> None:
        stream = self.outputs[fd]
        window = self._windows[stream]
        if not window.available:
            self._watch(fd)
            return
        try:
            data = os.read(fd, min(window.available, protocol.MAX_STREAM_CHUNK))
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO on a pty master once the terminal's last user is gone
        if not data:
            self._close_output(fd)
            return
        window.take(len(data))
        self.agent.send(protocol.stream(protocol.stream_id(self.number, stream), data))
        if not window.available:
            self._watch(fd)

    def _granted(self, stream: int, granted: int) -> None:
        try:
            self._windows[stream].grant(granted)
        except protocol.ProtocolError as err:
            print(f"pellucid-agent: process {self.number}: {err}", file=sys.stderr)
            return
        for fd, s in self.outputs.items():
            if s == stream:
                self._watch(fd)

    def _close_output(self, fd: int, notify: bool = True) -> None:
        stream = self.outputs.pop(fd)
        stream_id = protocol.stream_id(self.number, stream)
        self.agent.credit_handlers.pop(stream_id, None)
        if fd == self.stdin:  # the pty master: stdin ends with it
            self.stdin = None
            self.pending_in.clear()
        self._watch(fd)
        os.close(fd)
        self.agent.send(protocol.stream(stream_id, b""))
        if notify:
            self._on_output_closed()

    # Stdin: host -> process.

    def _from_host(self, data: bytes) -> None:
        if self.stdin is None or self._stdin_eof:
            return
        if not data:
            if not self.tty:  # a terminal has no end of input short of hanging up
                self._stdin_eof = True
                if not self.pending_in:
                    self._close_stdin()
            return
        if len(self.pending_in) + len(data) > protocol.STREAM_WINDOW:
            print(f"pellucid-agent: process {self.number}: stdin beyond the host's credit, dropped", file=sys.stderr)
            return
        self.pending_in += data
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        fd = self.stdin
        assert fd is not None
        try:
            written = os.write(fd, self.pending_in)
        except BlockingIOError:
            written = 0
        except OSError:  # the process closed its stdin: nothing more can be delivered
            if not self.tty:
                self._close_stdin()
                return
            self.pending_in.clear()
            written = 0
        if written:
            del self.pending_in[:written]
            self.agent.send(protocol.credit(self._stdin_id, written))
        if self._stdin_eof and not self.pending_in:
            self._close_stdin()
        else:
            self._watch(fd)

    def _close_stdin(self) -> None:
        fd = self.stdin
        if fd is None or self.tty:  # the pty master closes with the output
            return
        self.stdin = None
        self.pending_in.clear()
        self._watch(fd)
        os.close(fd)
