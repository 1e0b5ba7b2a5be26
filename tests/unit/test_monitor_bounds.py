"""The monitor against a hostile guest, without a VM: nothing the agent sends crashes it or grows
its buffers past their caps; answers nobody will read are not kept; DNS is relayed only for a
container that uses Docker's DNS. The monitor runs in the test's thread, turned step by step."""

from __future__ import annotations

import json
import random
import socket
import time

import pytest

from pellucid import messages, monitor, protocol, sockets
from pellucid.monitor import Monitor
from tests.fakes import SocketVM
from tests.monitor_fuzz import DnsServer, Peer

STDIN, STDOUT = protocol.STDIN, protocol.STDOUT


class Rig:
    """A monitor on a socket pair (the agent's end is ``agent``), and its clients."""

    def __init__(self, path, dns_relay: bool = False) -> None:
        (path / "vm.json").write_text(json.dumps({"id": "t", "network": {"dns_relay": dns_relay}}))
        host, guest = socket.socketpair()
        for sock in (host, guest):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        self.mon = Monitor(str(path))
        self.mon.vm = SocketVM(host)
        self.path = str(path / monitor.SOCKET)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockets.bind(self.listener, self.path)
        self.listener.listen(8)
        self.mon.listen(self.listener)
        self.agent = Peer(guest)
        self.peers = [self.agent]

    def client(self) -> Peer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        peer = Peer(sock)
        self.peers.append(peer)
        self.spin()
        return peer

    def spin(self, turns: int = 20) -> None:
        for _ in range(turns):
            for peer in self.peers:
                peer.flush()
            self.mon.step(0)

    def make_process(self, client: Peer, number: int) -> None:
        client.out += messages.ExecProcess("c", {"args": ["sh"]}).encode(1)
        self.spin()
        (req,) = [f for f in self.agent.read() if f.kind == protocol.REQUEST]
        self.agent.out += messages.ok(req.id, messages.ProcessResult(process=number, pid=10))
        self.spin()
        assert [f.kind for f in client.read()] == [protocol.RESPONSE]

    def close(self) -> None:
        self.mon.close()
        self.listener.close()
        for peer in self.peers:
            peer.close()


@pytest.fixture
def rig(tmp_path):
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def test_a_deeply_nested_frame_stops_the_vm_and_raises_nothing(rig, capsys):
    payload = b"[" * 100000
    rig.agent.out += protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, protocol.EVENT, 0, len(payload)) + payload
    rig.spin()
    assert not rig.mon.running
    assert "nested deeper than" in capsys.readouterr().err


def test_dns_from_a_guest_that_does_not_read_leaves_the_agent_buffer_at_its_cap(tmp_path, monkeypatch):
    """The guest asks and asks, and reads no answer: answers past the cap are dropped (its resolver
    retries), not queued."""
    dns = DnsServer(random.Random(1), answer_rate=1.0)
    monkeypatch.setattr(monitor, "DOCKER_DNS", dns.address)
    monkeypatch.setattr(monitor, "MAX_AGENT_BUFFER", 64 << 10)
    rig = Rig(tmp_path, dns_relay=True)
    biggest = 0
    try:
        for n in range(400):
            rig.agent.out += messages.DnsQuery(query=n + 1, data=b"q" * 1000).encode()
            rig.spin(3)
            dns.serve()
            rig.spin(3)
            biggest = max(biggest, len(rig.mon.agent_out))
        reply = len(messages.DnsReply(query=1, data=b"q" * 1600).encode(1))
        assert 64 << 10 <= biggest <= (64 << 10) + reply
        while rig.agent.read():  # the guest reads again: answers flow again
            rig.spin(3)
        rig.agent.out += messages.DnsQuery(query=999, data=b"late").encode()
        rig.spin()
        dns.serve()
        rig.spin()
        replies = [messages.DnsReply.from_json(f.json()["args"]) for f in rig.agent.read()]
        assert [r.query for r in replies] == [999]
    finally:
        rig.close()
        dns.sock.close()


def test_dns_is_not_relayed_for_a_container_that_does_not_use_it(rig, monkeypatch):
    dns = DnsServer(random.Random(1))
    monkeypatch.setattr(monitor, "DOCKER_DNS", dns.address)
    try:
        rig.agent.out += messages.DnsQuery(query=1, data=b"q").encode()
        rig.spin()
        with pytest.raises(BlockingIOError):
            dns.sock.recvfrom(4096)
        assert rig.mon.running and rig.mon.dns == {} and rig.agent.read() == []
    finally:
        dns.sock.close()


def test_credit_for_discarded_output_waits_while_the_guest_does_not_read(rig, monkeypatch):
    """A guest that sends output nobody reads and reads nothing itself gets no queue of credits:
    one credit per stream, once it reads again."""
    monkeypatch.setattr(monitor, "MAX_AGENT_BUFFER", 1024)
    shim = rig.client()
    rig.make_process(shim, 1)
    shim.close()
    cli = rig.client()  # a request bigger than the cap, which the guest does not read
    cli.out += messages.CreateContainer("big", {"annotations": {"a": "x" * (200 << 10)}}).encode(1)
    rig.spin(50)
    behind = len(rig.mon.agent_out)
    assert behind >= 1024
    for _ in range(3000):
        rig.agent.out += protocol.stream(protocol.stream_id(1, STDOUT), b"o")
    rig.spin(50)
    assert len(rig.mon.agent_out) == behind and rig.mon.owed == {protocol.stream_id(1, STDOUT): 3000}
    frames = []
    for _ in range(100):
        frames += rig.agent.read()
        rig.spin(2)
    credits = [(f.id, protocol.parse_credit(f)) for f in frames if f.kind == protocol.CREDIT]
    assert credits == [(protocol.stream_id(1, STDOUT), 3000)]


def test_an_unanswered_request_is_answered_by_the_monitor_after_its_deadline(rig, monkeypatch):
    monkeypatch.setattr(monitor, "PENDING_SECONDS", 0.05)
    cli = rig.client()
    cli.out += messages.Ping().encode(9)
    rig.spin()
    (req,) = rig.agent.read()
    time.sleep(0.1)
    rig.mon.next_sweep = 0.0
    rig.spin()
    (answer,) = cli.read()
    assert answer.id == 9 and answer.json()["error"]["kind"] == messages.ERR_TIMEOUT
    assert rig.mon.pending == {}
    rig.agent.out += messages.ok(req.id, messages.PingResult(uptime_ms=1))  # too late: to nobody
    rig.spin()
    assert cli.read() == [] and rig.mon.running


def test_answers_to_a_client_that_left_are_not_kept_but_its_new_process_gets_its_stdin_closed(rig):
    cli = rig.client()
    cli.out += messages.Ping().encode(1) + messages.ExecProcess("c", {"args": ["sh"]}).encode(2)
    rig.spin()
    ping, exec_ = rig.agent.read()
    cli.close()
    rig.spin()
    assert list(rig.mon.pending) == [exec_.id]
    rig.agent.out += messages.ok(exec_.id, messages.ProcessResult(process=4, pid=10))
    rig.agent.out += messages.ok(ping.id, messages.PingResult(uptime_ms=1))
    rig.spin()
    (eof,) = rig.agent.read()
    assert (eof.kind, eof.id, eof.payload) == (protocol.STREAM, protocol.stream_id(4, STDIN), b"")
    assert rig.mon.pending == {} and rig.mon.running


def test_a_client_with_too_many_requests_waiting_is_not_read_until_answers_come(rig):
    cli = rig.client()
    for i in range(monitor.MAX_CLIENT_REQUESTS + 10):
        cli.out += messages.Ping().encode(i + 1)
    rig.spin()
    requests = rig.agent.read()
    assert len(requests) == monitor.MAX_CLIENT_REQUESTS
    rig.agent.out += messages.ok(requests[0].id, messages.PingResult(uptime_ms=1))
    rig.spin()
    assert len(rig.agent.read()) == 1  # one answered, one more taken
    assert [f.id for f in cli.read()] == [1]


def test_a_process_number_made_twice_stops_the_vm(rig, capsys):
    rig.make_process(rig.client(), 3)
    other = rig.client()
    other.out += messages.ExecProcess("c", {"args": ["sh"]}).encode(1)
    rig.spin()
    (req,) = rig.agent.read()
    rig.agent.out += messages.ok(req.id, messages.ProcessResult(process=3, pid=11))
    rig.spin()
    assert not rig.mon.running and "made process 3 twice" in capsys.readouterr().err


def test_a_stream_ends_once(rig):
    """Empty frames cost the guest no credit: after the first (the end), the stream is closed."""
    shim = rig.client()
    rig.make_process(shim, 1)
    for _ in range(1000):
        rig.agent.out += protocol.stream(protocol.stream_id(1, STDOUT), b"")
    rig.spin()
    assert [(f.kind, f.payload) for f in shim.read()] == [(protocol.STREAM, b"")]
    assert rig.mon.running
