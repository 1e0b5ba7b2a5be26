"""The monitor's stream routing without a VM: a fake agent on a socketpair, shims and CLI commands
as real clients of its socket. A stalled reader holds up only its own streams, never the channel,
another client or a control request; every buffer is bounded by the windows."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from pellucid import messages, protocol, sockets
from pellucid.monitor import Monitor
from tests.fakes import SocketVM

CHUNK = protocol.MAX_STREAM_CHUNK
WINDOW = protocol.STREAM_WINDOW


class Peer:
    """One end of a connection, reading frames with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader()
        self.backlog: list[protocol.Frame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self, timeout: float = 5.0) -> protocol.Frame:
        deadline = time.monotonic() + timeout
        while not self.backlog:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(1 << 18)
            if not data:
                raise EOFError
            self.backlog += self.reader.feed(data)
        return self.backlog.pop(0)

    def until(self, match, timeout: float = 5.0) -> protocol.Frame:
        while True:
            frame = self.next(timeout)
            if match(frame):
                return frame

    def quiet(self, seconds: float = 0.3) -> list[protocol.Frame]:
        """Whatever arrives within ``seconds``."""
        got = []
        try:
            while True:
                got.append(self.next(seconds))
        except (socket.timeout, TimeoutError):
            return got


@pytest.fixture
def monitor(tmp_path):
    (tmp_path / "vm.json").write_text(json.dumps({"id": "t"}))
    host, guest = socket.socketpair()
    mon = Monitor(str(tmp_path))
    mon.vm = SocketVM(host)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "monitor.sock")
    sockets.bind(listener, path)
    listener.listen(8)
    thread = threading.Thread(target=mon.serve, args=(listener,), daemon=True)
    thread.start()
    mon.agent = Peer(guest)
    mon.connect = lambda: Peer(sockets.connect(path, timeout=5))
    mon.thread = thread
    yield mon
    mon.running = False
    thread.join(5)
    mon.close()
    listener.close()
    guest.close()


def make_process(mon, client: Peer, number: int) -> None:
    """The client asks for a process; the agent makes it as number ``number``."""
    client.send(protocol.request(1, "exec_process", {"id": "c"}))
    req = mon.agent.until(lambda f: f.kind == protocol.REQUEST)
    mon.agent.send(protocol.response_ok(req.id, {"process": number, "pid": 100 + number}))
    assert client.until(lambda f: f.kind == protocol.RESPONSE).json()["result"]["process"] == number


def out(number: int) -> int:
    return protocol.stream_id(number, protocol.STDOUT)


def test_a_stalled_reader_holds_up_neither_another_process_nor_a_control_request(monitor):
    slow, fast = monitor.connect(), monitor.connect()
    make_process(monitor, slow, 1)
    make_process(monitor, fast, 2)
    for _ in range(WINDOW // CHUNK):  # the agent sends a window to each; `slow` reads nothing
        monitor.agent.send(protocol.stream(out(1), b"s" * CHUNK))
    received = 0
    total = 8 * WINDOW
    sent = 0
    while received < total:
        while sent < total and sent - received < WINDOW:
            monitor.agent.send(protocol.stream(out(2), b"f" * CHUNK))
            sent += CHUNK
        frame = fast.until(lambda f: f.kind == protocol.STREAM)
        received += len(frame.payload)
        fast.send(protocol.credit(frame.id, len(frame.payload)))  # written to its output: granted back
        credit = monitor.agent.until(lambda f: f.kind == protocol.CREDIT)
        assert credit.id == out(2)  # only the fast reader's credit reaches the agent
    assert received == total

    cli = monitor.connect()  # `pellucid state` meanwhile
    cli.send(messages.Ping().encode(9))
    req = monitor.agent.until(lambda f: f.kind == protocol.REQUEST)
    monitor.agent.send(protocol.response_ok(req.id, {"uptime_ms": 1}))
    assert cli.until(lambda f: f.kind == protocol.RESPONSE).id == 9

    # The slow reader was never dropped: its window is all there, then its exit, in that order.
    monitor.agent.send(protocol.event("exit", process=1, container="c", status=0))
    data = b""
    while True:
        frame = slow.next()
        if frame.kind == protocol.EVENT:
            assert frame.json()["event"] == "exit"
            break
        data += frame.payload
    assert data == b"s" * WINDOW


def test_an_agent_sending_past_the_window_is_stopped(monitor, capsys):
    client = monitor.connect()
    make_process(monitor, client, 1)
    for _ in range(WINDOW // CHUNK):
        monitor.agent.send(protocol.stream(out(1), b"x" * CHUNK))
    monitor.agent.send(protocol.stream(out(1), b"x"))
    monitor.thread.join(5)
    assert not monitor.thread.is_alive() and "broke the protocol" in capsys.readouterr().err


def test_stdin_is_checked_against_its_window_and_credit_goes_back_to_its_sender(monitor):
    shim, other = monitor.connect(), monitor.connect()
    make_process(monitor, shim, 1)
    make_process(monitor, other, 2)
    stdin = protocol.stream_id(1, protocol.STDIN)
    for _ in range(WINDOW // CHUNK):
        shim.send(protocol.stream(stdin, b"i" * CHUNK))
    got = 0
    while got < WINDOW:
        got += len(monitor.agent.until(lambda f: f.kind == protocol.STREAM).payload)
    monitor.agent.send(protocol.credit(stdin, CHUNK))  # the process took a chunk
    frame = shim.until(lambda f: f.kind == protocol.CREDIT)
    assert (frame.id, protocol.parse_credit(frame)) == (stdin, CHUNK)
    assert other.quiet(0.2) == []
    other.send(protocol.stream(stdin, b"not yours"))  # another client cannot write this stdin
    shim.send(protocol.stream(stdin, b"i" * CHUNK))
    assert monitor.agent.until(lambda f: f.kind == protocol.STREAM).payload == b"i" * CHUNK
    shim.send(protocol.stream(stdin, b"over"))  # past its credit: the client is cut off
    with pytest.raises(EOFError):
        shim.quiet(1)
    assert monitor.thread.is_alive()


def test_output_of_a_process_whose_client_left_is_discarded_and_its_stdin_closed(monitor):
    shim = monitor.connect()
    make_process(monitor, shim, 1)
    shim.sock.close()
    eof = monitor.agent.until(lambda f: f.kind == protocol.STREAM)
    assert (eof.id, eof.payload) == (protocol.stream_id(1, protocol.STDIN), b"")
    monitor.agent.send(protocol.stream(out(1), b"y" * CHUNK))
    credit = monitor.agent.until(lambda f: f.kind == protocol.CREDIT)
    assert (credit.id, protocol.parse_credit(credit)) == (out(1), CHUNK)
