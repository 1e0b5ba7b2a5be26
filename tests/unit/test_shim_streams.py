"""The shim's side of flow control, against a fake monitor: stdin is read only as far as the agent
granted, and output is granted back only once written to the caller's pipe."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from pellucid import protocol, sockets
from pellucid.host_messages import ShimRequest
from pellucid.shim import Output, Shim

from .test_monitor_streams import Peer

WINDOW = protocol.STREAM_WINDOW
STDIN = protocol.stream_id(1, protocol.STDIN)
STDOUT = protocol.stream_id(1, protocol.STDOUT)


@pytest.fixture
def shim_and_monitor(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "monitor.sock")
    sockets.bind(listener, path)
    listener.listen(1)
    shim = Shim(ShimRequest(monitor=path, op="exec_process", args={}))
    conn, _ = listener.accept()
    shim.process = 1
    yield shim, Peer(conn)
    conn.close()
    shim.sock.close()
    listener.close()


def test_stdin_is_read_only_as_far_as_the_credit_allows(shim_and_monitor):
    shim, monitor = shim_and_monitor
    r, w = os.pipe()
    shim.in_fd = r
    payload = os.urandom(2 * WINDOW + 1000)

    def caller() -> None:
        os.write(w, payload)  # blocks once the pipe is full: the shim stops reading at its credit
        os.close(w)

    threading.Thread(target=caller, daemon=True).start()
    threading.Thread(target=shim.pump_stdin, daemon=True).start()
    got = b""
    while len(got) < WINDOW:
        got += monitor.until(lambda f: f.kind == protocol.STREAM).payload
    assert got == payload[:WINDOW] and monitor.quiet(0.3) == []
    shim.handle(protocol.Frame(protocol.CREDIT, STDIN, protocol.credit(STDIN, WINDOW)[protocol.HEADER.size:]))
    while True:
        frame = monitor.until(lambda f: f.kind == protocol.STREAM)
        if not frame.payload:
            break
        got += frame.payload
        shim.stdin_granted(len(frame.payload))  # the process took it
    assert got == payload
    os.close(r)


def test_output_is_granted_back_only_once_the_reader_took_it(shim_and_monitor):
    shim, monitor = shim_and_monitor
    r, w = os.pipe()
    output = Output(shim, STDOUT, w, close_at_eof=True)
    output.start()
    output.chunks.put(b"a" * 200_000)  # more than the pipe holds: the write waits for the reader
    output.chunks.put(b"")
    assert monitor.quiet(0.3) == []
    got = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        got += chunk
    credit = monitor.until(lambda f: f.kind == protocol.CREDIT)
    assert got == b"a" * 200_000 and (credit.id, protocol.parse_credit(credit)) == (STDOUT, 200_000)
    output.join(5)
    os.close(r)
