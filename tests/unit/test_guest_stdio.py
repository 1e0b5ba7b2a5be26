"""The guest's stdio relay (pellucid.guest.stdio) with real pipes and processes on the host: output
is read only as far as the host granted credit, stdin is granted back as the process takes it,
and the exit waits for the output."""

from __future__ import annotations

import os
import selectors
import subprocess
import time

import pytest

from pellucid import protocol
from pellucid.guest import stdio as stdio_mod
from pellucid.guest.stdio import Stdio

OUT = protocol.stream_id(1, protocol.STDOUT)
ERR = protocol.stream_id(1, protocol.STDERR)
IN = protocol.stream_id(1, protocol.STDIN)


class FakeAgent:
    """What Stdio uses of the agent: its selector, its handlers and its channel (frames recorded)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.stream_handlers: dict = {}
        self.credit_handlers: dict = {}
        self.reader = protocol.FrameReader()
        self.frames: list[protocol.Frame] = []

    def send(self, data: bytes) -> None:
        self.frames += self.reader.feed(data)

    def run(self, seconds: float = 0.3) -> None:
        """Serve the selector until it has been idle for ``seconds``."""
        while True:
            events = self.selector.select(seconds)
            if not events:
                return
            for key, mask in events:
                key.data(mask)

    def data(self, id: int) -> bytes:
        return b"".join(f.payload for f in self.frames if f.kind == protocol.STREAM and f.id == id)

    def credits(self, id: int) -> int:
        return sum(protocol.parse_credit(f) for f in self.frames if f.kind == protocol.CREDIT and f.id == id)

    def eof(self, id: int) -> bool:
        return any(f.kind == protocol.STREAM and f.id == id and not f.payload for f in self.frames)


@pytest.fixture
def pipes():
    fds = []

    def make() -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        fds.extend((r, w))
        return r, w

    yield make
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def relay(agent, pipes, closed=None):
    """A process's stdio as the agent holds it: the write end of stdin, the read ends of its outputs."""
    in_r, in_w = pipes()
    out_r, out_w = pipes()
    err_r, err_w = pipes()
    for fd in (in_w, out_r, err_r):
        os.set_blocking(fd, False)
    s = Stdio(agent, 1, in_w, {out_r: protocol.STDOUT, err_r: protocol.STDERR}, False,
              closed or (lambda: None))
    return s, in_r, out_w, err_w


def test_output_is_read_only_as_far_as_the_host_granted(pipes):
    agent = FakeAgent()
    s, _, out_w, err_w = relay(agent, pipes)
    size = 3 * protocol.STREAM_WINDOW + 12345
    writer = subprocess.Popen(["head", "-c", str(size), "/dev/urandom"], stdout=out_w)
    os.close(out_w)
    os.close(err_w)
    agent.run()
    assert len(agent.data(OUT)) == protocol.STREAM_WINDOW  # the rest waits in the pipe; the writer blocks
    assert writer.poll() is None
    agent.credit_handlers[OUT](100_000)
    agent.run()
    assert len(agent.data(OUT)) == protocol.STREAM_WINDOW + 100_000
    while not agent.eof(OUT):
        got = len(agent.data(OUT))
        agent.credit_handlers[OUT](min(got, protocol.STREAM_WINDOW))  # the host consumed everything so far
        agent.run(0.2)
    assert writer.wait(10) == 0
    assert len(agent.data(OUT)) == size and agent.eof(ERR)
    assert not s.outputs and OUT not in agent.credit_handlers


def test_credit_beyond_the_window_is_refused(pipes, capsys):
    agent = FakeAgent()
    relay(agent, pipes)
    agent.credit_handlers[OUT](1)
    assert "beyond" in capsys.readouterr().err


def test_stdin_is_granted_back_as_the_process_takes_it_and_ends_after_its_last_byte(pipes):
    agent = FakeAgent()
    s, in_r, _, _ = relay(agent, pipes)
    payload = os.urandom(protocol.STREAM_WINDOW)
    for i in range(0, len(payload), protocol.MAX_STREAM_CHUNK):
        agent.stream_handlers[IN](payload[i:i + protocol.MAX_STREAM_CHUNK])
    agent.stream_handlers[IN](b"")  # EOF comes after all the data
    agent.run()
    granted = agent.credits(IN)
    assert 0 < granted < len(payload)  # as much as the pipe took, no more
    assert len(s.pending_in) == len(payload) - granted
    got = bytearray()
    while True:
        chunk = os.read(in_r, 65536)  # the process reads its stdin
        if not chunk:
            break
        got += chunk
        agent.run(0.05)
    assert bytes(got) == payload and agent.credits(IN) == len(payload)
    assert s.stdin is None


def test_stdin_past_the_credit_is_dropped_not_buffered(pipes, capsys):
    agent = FakeAgent()
    s, _, _, _ = relay(agent, pipes)
    for _ in range(protocol.STREAM_WINDOW // protocol.MAX_STREAM_CHUNK):  # the process never reads
        agent.stream_handlers[IN](b"x" * protocol.MAX_STREAM_CHUNK)
    assert len(s.pending_in) + agent.credits(IN) == protocol.STREAM_WINDOW
    credit_left = agent.credits(IN)  # what the pipe took was granted back
    agent.stream_handlers[IN](b"y" * (credit_left + 1))  # a host that ignores its credit
    assert "beyond the host's credit" in capsys.readouterr().err
    assert len(s.pending_in) == protocol.STREAM_WINDOW - credit_left
    agent.stream_handlers[IN](b"y" * credit_left)
    assert len(s.pending_in) == protocol.STREAM_WINDOW


def test_exit_waits_for_unread_output_but_not_for_idle_pipes_held_by_children(pipes, monkeypatch):
    monkeypatch.setattr(stdio_mod, "EXIT_DRAIN_SECONDS", 0.2)
    agent = FakeAgent()
    s, _, out_w, err_w = relay(agent, pipes)
    os.write(out_w, b"a" * 10)
    exited = time.monotonic()
    assert not s.drained(exited)  # the output comes first
    agent.run(0.05)
    assert agent.data(OUT) == b"a" * 10
    time.sleep(0.25)
    assert s.drained(exited)  # nothing unread, only a child holding the pipes open

    agent = FakeAgent()
    s, _, out_w, err_w = relay(agent, pipes)
    while len(agent.data(OUT)) < protocol.STREAM_WINDOW:  # a reader that took a window, then stalled
        os.write(out_w, b"c" * 60000)
        agent.run(0.05)
    os.write(out_w, b"d" * 100)
    time.sleep(0.25)
    assert not s.drained(time.monotonic() - 1)  # unread output the host has not taken yet: the exit waits


def test_exit_reported_at_once_when_both_outputs_reach_eof(pipes):
    agent = FakeAgent()
    closed = []
    s, _, out_w, err_w = relay(agent, pipes, closed=lambda: closed.append(1))
    os.write(out_w, b"last words")
    os.close(out_w)
    os.close(err_w)
    agent.run(0.05)
    assert closed == [1, 1] and s.drained(time.monotonic())
    assert agent.data(OUT) == b"last words" and agent.eof(OUT) and agent.eof(ERR)


def test_a_terminal_ignores_eof_and_closes_once_with_its_output():
    agent = FakeAgent()
    master, slave = os.openpty()
    os.set_blocking(master, False)
    s = Stdio(agent, 1, master, {master: protocol.STDOUT}, True, lambda: None)
    assert s.terminal == master
    agent.stream_handlers[IN](b"echo\n")
    agent.stream_handlers[IN](b"")  # a terminal has no end of input
    agent.run(0.05)
    assert s.terminal == master and agent.credits(IN) == 5
    os.write(slave, b"out")
    agent.run(0.05)
    assert agent.data(OUT).endswith(b"out")
    os.close(slave)
    agent.run(0.05)  # EIO on the master: the terminal's last user is gone
    assert agent.eof(OUT) and s.terminal is None and not s.outputs
    s.close()
