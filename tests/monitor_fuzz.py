"""A fuzzer of the monitor's guest-facing side, without a VM: a socket pair stands for the
virtio-serial port, and the fuzzer plays a hostile agent on it while real clients (shims and CLI
commands, some reading, some stalled, some leaving) use the monitor's socket.

The agent's frames are valid ones built from pellucid.messages' records (answers to the requests
it is sent, exits, DNS queries, output within its windows, credit for stdin), a share of them
mutated: bit flips, truncation, oversize lengths, wrong types, deep nesting, unknown ops and
events, stray stream ids, credit overflow, garbage. A mutation the monitor refuses stops its VM
(a session ends, as a real monitor would stop QEMU); the fuzzer then starts a new session.

What counts as a failure: an exception out of the monitor's event loop, or a buffer past its bound
(checked after every turn). bench/fuzz runs it long; tests/unit/test_monitor_fuzz.py short.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import struct
import tempfile
import traceback
from typing import Any, Callable

from pellucid import messages, monitor, protocol, sockets
from pellucid.monitor import Monitor
from tests.fakes import SocketVM

CHUNK = protocol.MAX_STREAM_CHUNK
WINDOW = protocol.STREAM_WINDOW
FRAME_MAX = protocol.HEADER.size + protocol.MAX_PAYLOAD
# Small caps, so that a short run reaches every bound (the monitor reads them at run time).
SMALL_CAPS = {"MAX_CLIENT_BUFFER": 256 << 10, "MAX_CLIENT_REQUESTS": 8, "MAX_AGENT_BUFFER": 256 << 10,
              "MAX_PENDING": 16, "PENDING_SECONDS": 0.05, "MAX_DNS_QUERIES": 8, "DNS_SECONDS": 0.05}


class Peer:
    """A non-blocking end of a socket: what it has to send waits in ``out``; frames read are parsed."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.out = bytearray()
        self.reader = protocol.FrameReader(max_payload=1 << 31)  # a test peer: no limit of its own
        self.closed = False

    def flush(self) -> None:
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                return
            except OSError:
                self.closed = True
                return
            del self.out[:n]

    def read(self) -> list[protocol.Frame]:
        frames: list[protocol.Frame] = []
        while not self.closed:
            try:
                data = self.sock.recv(1 << 18)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            frames += self.reader.feed(data)
        return frames

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Client(Peer):
    """A shim or CLI command: requests, stdin within its credit, credit for output it reads."""

    def __init__(self, sock: socket.socket, rng: random.Random, stats: Stats, stalled: bool) -> None:
        super().__init__(sock)
        self.rng, self.stats = rng, stats
        self.stalled = stalled  # reads nothing: its responses and output pile up in the monitor
        self.next_id = 1
        self.processes: dict[int, int] = {}  # number -> stdin credit
        self.creating: set[int] = set()

    def act(self) -> None:
        rng = self.rng
        roll = rng.random()
        cid = self.next_id
        self.next_id += 1
        if roll < 0.3 or not self.processes:
            request: messages.Request = rng.choice((
                messages.ExecProcess("c", {"args": ["sh"], "cwd": "/"}),
                messages.CreateContainer(f"c{cid}", {"ociVersion": "1.0.2", "process": {"args": ["sh"]},
                                                     "annotations": {"big": "a" * rng.choice((0, 100, 200000))}}),
                messages.Ping(), messages.Stats("c"), messages.Ps("c"), messages.StartContainer("c")))
            if isinstance(request, (messages.ExecProcess, messages.CreateContainer)):
                self.creating.add(cid)
            self.out += request.encode(cid)
        elif roll < 0.5:
            number = rng.choice(list(self.processes))
            self.out += rng.choice((messages.SignalProcess(number, rng.randint(1, 64)),
                                    messages.Resize(number, 24, 80))).encode(cid)
        else:
            number = rng.choice(list(self.processes))
            credit = self.processes[number]
            size = min(credit, rng.choice((0, 1, 100, CHUNK, CHUNK)))
            if size or rng.random() < 0.05:  # an empty frame is stdin's end
                self.processes[number] -= size
                self.out += protocol.stream(protocol.stream_id(number, protocol.STDIN), b"i" * size)

    def take(self, frames: list[protocol.Frame]) -> None:
        for frame in frames:
            try:
                self._take(frame)
            except protocol.ProtocolError:
                pass  # a response the monitor passed on as the agent sent it: a real client refuses it too

    def _take(self, frame: protocol.Frame) -> None:
        if frame.kind == protocol.RESPONSE:
            msg = frame.json()
            error = msg.get("error")
            if isinstance(error, dict) and error.get("kind") == messages.ERR_TIMEOUT:
                self.stats.expired += 1
            if frame.id in self.creating and msg.get("ok") is True:
                self.processes[messages.ProcessResult.from_json(msg.get("result")).process] = WINDOW
            self.creating.discard(frame.id)
        elif frame.kind == protocol.CREDIT:
            number, _ = protocol.split_stream_id(frame.id)
            if number in self.processes:
                self.processes[number] = min(WINDOW, self.processes[number] + protocol.parse_credit(frame))
        elif frame.kind == protocol.STREAM and frame.payload:
            self.out += protocol.credit(frame.id, len(frame.payload))  # written out: granted back
        elif frame.kind == protocol.EVENT:
            self.processes.pop(messages.read_event(frame.json()).process, None)


class Agent(Peer):
    """The hostile guest: what it is sent, tracked, to answer it plausibly, and what it sends."""

    def __init__(self, sock: socket.socket, rng: random.Random) -> None:
        super().__init__(sock)
        self.rng = rng
        self.requests: dict[int, str] = {}  # agent id -> op, not yet answered
        self.next_process = 1
        self.outputs: dict[int, int] = {}  # output stream id -> window left
        self.stdin_taken: dict[int, int] = {}  # stdin stream id -> bytes received, not yet credited
        self.stalled = False  # not reading: the monitor's buffer for it fills

    def take(self, frames: list[protocol.Frame]) -> None:
        for frame in frames:
            if frame.kind == protocol.REQUEST:
                self.requests[frame.id] = frame.json()["op"]
            elif frame.kind == protocol.STREAM:
                self.stdin_taken[frame.id] = self.stdin_taken.get(frame.id, 0) + len(frame.payload)
            elif frame.kind == protocol.CREDIT and frame.id in self.outputs:
                self.outputs[frame.id] = min(WINDOW, self.outputs[frame.id] + protocol.parse_credit(frame))

    def frame(self) -> bytes:
        """A valid frame, as a correct agent would send it."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.3 and self.requests:
            agent_id = rng.choice(list(self.requests))
            return self.answer(agent_id, self.requests.pop(agent_id))
        open_outputs = [sid for sid, left in self.outputs.items() if left]
        if roll < 0.6 and open_outputs:
            sid = rng.choice(open_outputs)
            if rng.random() < 0.02:  # the stream's end
                del self.outputs[sid]
                return protocol.stream(sid, b"")
            size = min(self.outputs[sid], rng.choice((1, 7, 4096, CHUNK)))
            self.outputs[sid] -= size
            return protocol.stream(sid, os.urandom(8) * (size // 8) + b"o" * (size % 8))
        owed = [sid for sid, taken in self.stdin_taken.items() if taken]
        if roll < 0.7 and owed:
            sid = rng.choice(owed)
            return protocol.credit(sid, min(WINDOW, self.stdin_taken.pop(sid)))
        if roll < 0.8 and self.outputs:
            number = rng.choice(list(self.outputs)) >> 2
            for fd in (protocol.STDOUT, protocol.STDERR):
                self.outputs.pop(protocol.stream_id(number, fd), None)
            return messages.Exit(process=number, container="c", status=rng.randint(0, 255)).encode()
        if roll < 0.83:
            return messages.DnsQuery(query=rng.randint(1, 1 << 32), data=os.urandom(rng.randint(0, 64))).encode()
        return self.answer(rng.randint(0, 0xFFFFFFFF), rng.choice(list(messages.REQUESTS)))  # to nobody

    def answer(self, agent_id: int, op: str) -> bytes:
        rng = self.rng
        if rng.random() < 0.15:
            return messages.Error(rng.choice((messages.ERR_OS, messages.ERR_NOT_FOUND)), "no").encode(agent_id)
        if op in (messages.CreateContainer.OP, messages.ExecProcess.OP):
            number = self.next_process
            self.next_process += 1
            for fd in (protocol.STDOUT, protocol.STDERR):
                self.outputs[protocol.stream_id(number, fd)] = WINDOW
            result: messages.Record | None = messages.ProcessResult(process=number, pid=rng.randint(1, 1 << 22))
        elif op == messages.Ping.OP:
            result = messages.PingResult(uptime_ms=rng.randint(0, 1 << 40))
        elif op == messages.Ps.OP:
            result = messages.PsResult([messages.PsEntry(i + 1, 0, 0, "S", 1, 1, 1, "sh" * rng.randint(0, 200))
                                        for i in range(rng.choice((0, 1, 5, 200)))])
        elif op == messages.Stats.OP:
            result = messages.StatsResult(1, 1, 1, 1, 0, 1, {"anon": 1}, 1)
        else:
            result = None
        return messages.ok(agent_id, result)


# Mutations: each takes a valid frame and the random source, and returns the bytes sent instead.

def _header(kind: int, id: int, length: int, version: int = protocol.VERSION) -> bytes:
    return protocol.HEADER.pack(protocol.MAGIC, version, kind, id & 0xFFFFFFFF, length & 0xFFFFFFFF)


def _split(frame: bytes) -> tuple[int, int, bytes]:
    _, _, kind, id, _ = protocol.HEADER.unpack_from(frame)
    return kind, id, frame[protocol.HEADER.size:]


def _odd_value(rng: random.Random) -> Any:
    return rng.choice((None, True, -1, 0, 1 << 70, 1.5, float("inf"), "", "x" * 5000, "../../etc", "\ud800",
                       [], [1, [2]], {}, {"a": {}}, "9" * 4000))


def _retype(value: Any, rng: random.Random) -> Any:
    """``value`` with one node replaced by a value of another type."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        return {**value, key: _retype(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return value[:i] + [_retype(value[i], rng)] + value[i + 1:]
    return _odd_value(rng)


def _json_mutation(change: Callable[[dict, random.Random], Any]) -> Callable[[bytes, random.Random], bytes]:
    def mutate(frame: bytes, rng: random.Random) -> bytes:
        kind, id, payload = _split(frame)
        try:
            msg = json.loads(payload)
        except ValueError:
            return frame
        if not isinstance(msg, dict):
            return frame
        data = json.dumps(change(msg, rng), allow_nan=True).encode(errors="surrogatepass")[:protocol.MAX_PAYLOAD]
        return _header(kind if kind in protocol.JSON_KINDS else protocol.EVENT, id, len(data)) + data
    return mutate


def _nest(msg: dict, rng: random.Random) -> Any:
    """A field nested just within or just past the limit."""
    depth = rng.choice((protocol.MAX_JSON_DEPTH - 2, protocol.MAX_JSON_DEPTH, protocol.MAX_JSON_DEPTH + 1))
    return {**msg, rng.choice(list(msg) or ["x"]): json.loads("[" * depth + "]" * depth)}


def deep_nesting(frame: bytes, rng: random.Random) -> bytes:
    """A JSON frame nested far past the limit (raw, as json.dumps could not make it)."""
    kind = rng.choice(protocol.JSON_KINDS)
    depth = rng.choice((protocol.MAX_JSON_DEPTH + 1, 1000, 1000, 10000, 100000))
    opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")))
    payload = b'{"ok":true,"result":' + opener * depth + (closer * depth if rng.random() < 0.5 else b"") + b"}"
    payload = payload[:protocol.MAX_PAYLOAD]
    return _header(kind, rng.choice((0, 1, rng.randint(0, 0xFFFFFFFF))), len(payload)) + payload


def bit_flips(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 8)):
        bit = rng.randrange(len(data) * 8) if rng.random() < 0.7 else rng.randrange(protocol.HEADER.size * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def truncation(frame: bytes, rng: random.Random) -> bytes:
    return frame[:rng.randrange(len(frame))]


def oversize_length(frame: bytes, rng: random.Random) -> bytes:
    kind, id, payload = _split(frame)
    return _header(kind, id, rng.choice((protocol.MAX_PAYLOAD + 1, 0xFFFFFFFF, 1 << 30))) + payload


def wrong_length(frame: bytes, rng: random.Random) -> bytes:
    kind, id, payload = _split(frame)
    return _header(kind, id, max(0, len(payload) + rng.choice((-3, -1, 1, 5)))) + payload


def unknown_kind_or_version(frame: bytes, rng: random.Random) -> bytes:
    kind, id, payload = _split(frame)
    if rng.random() < 0.5:
        return _header(rng.choice((0, 6, 255)), id, len(payload)) + payload
    return _header(kind, id, len(payload), version=rng.choice((0, 1, 3, 255))) + payload


def unknown_name(frame: bytes, rng: random.Random) -> bytes:
    name = rng.choice(("", "nope", "exit ", "EXIT", "dns_query\0", "x" * 300))
    payload = json.dumps(rng.choice(({"event": name, "process": 1}, {"op": name, "args": {}},
                                     {"ok": rng.choice((True, False, None, 1)), "error": name}))).encode()
    return _header(rng.choice(protocol.JSON_KINDS), rng.randint(0, 5), len(payload)) + payload


def stray_stream(frame: bytes, rng: random.Random) -> bytes:
    """Data or end on a stream of no live process, fd 3, stdin, or past the window."""
    sid = rng.choice((rng.randint(0, 0xFFFFFFFF), rng.randint(0, 64), (rng.randint(1, 16) << 2) | 3))
    data = rng.choice((b"", b"x", os.urandom(rng.randint(1, CHUNK)), b"y" * (WINDOW + 1)))[:protocol.MAX_PAYLOAD]
    return protocol.stream(sid, data)


def credit_overflow(frame: bytes, rng: random.Random) -> bytes:
    sid = rng.choice((rng.randint(0, 64), _split(frame)[1]))
    payload = rng.choice((struct.pack("!I", 0), struct.pack("!I", 0xFFFFFFFF), struct.pack("!I", WINDOW + 1),
                          struct.pack("!I", WINDOW), b"", b"\0\0\0\1\0", os.urandom(rng.randint(0, 9))))
    return _header(protocol.CREDIT, sid, len(payload)) + payload


def garbage(frame: bytes, rng: random.Random) -> bytes:
    return os.urandom(rng.randint(1, 64))


def replay(frame: bytes, rng: random.Random) -> bytes:
    return frame * rng.randint(2, 50)


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit_flips": bit_flips, "truncation": truncation, "oversize_length": oversize_length,
    "wrong_length": wrong_length, "wrong_types": _json_mutation(_retype), "deep_nesting": deep_nesting,
    "nesting_near_limit": _json_mutation(_nest), "unknown_kind_or_version": unknown_kind_or_version,
    "unknown_name": unknown_name, "stray_stream": stray_stream, "credit_overflow": credit_overflow,
    "garbage": garbage, "replay": replay,
}


class Stats:
    def __init__(self) -> None:
        self.frames = 0  # frames (or mutated bytes in their place) sent to the monitor's guest side
        self.mutated = 0
        self.sessions = 0
        self.stopped = 0  # sessions the monitor ended on a protocol violation (it stops the VM)
        self.crashes: list[str] = []  # tracebacks of exceptions out of the event loop
        self.violations: list[str] = []  # buffers past their bounds
        self.expired = 0  # answers the monitor gave in the agent's stead (it did not answer in time)
        self.high: dict[str, int] = {}  # high-water marks of the monitor's buffers

    def mark(self, name: str, value: int) -> None:
        if value > self.high.get(name, 0):
            self.high[name] = value


class Session:
    """One monitor on a socket pair, its clients and the hostile agent."""

    def __init__(self, work: str, rng: random.Random, stats: Stats, mutation_rate: float) -> None:
        self.rng, self.stats, self.mutation_rate = rng, stats, mutation_rate
        self.dir = work
        relay = rng.random() < 0.5
        with open(os.path.join(self.dir, "vm.json"), "w") as f:
            json.dump({"id": "fuzz", "network": {"nics": [], "routes": [], "dns_relay": relay}}, f)
        host, guest = socket.socketpair()
        for sock in (host, guest):  # small, as a virtio-serial port's: the monitor's own buffer fills sooner
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        self.mon = Monitor(self.dir)
        self.mon.vm = SocketVM(host)
        self.made: dict[int, int] = {}  # id of a connection -> processes made for it
        opened = self.mon._opened

        def counting(conn: Any, number: int) -> None:
            self.made[id(conn)] = self.made.get(id(conn), 0) + 1
            opened(conn, number)
        self.mon._opened = counting  # type: ignore[method-assign]
        self.path = os.path.join(self.dir, monitor.SOCKET)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockets.bind(self.listener, self.path)
        self.listener.listen(16)
        self.mon.listen(self.listener)
        self.agent = Agent(guest, rng)
        self.clients: list[Client] = []
        self.log = io.StringIO()
        self.crashed = False
        for _ in range(3):
            self.connect()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        self.clients.append(Client(sock, self.rng, self.stats, stalled=self.rng.random() < 0.3))

    def turn(self) -> bool:
        """One round: clients and agent act, the monitor turns; False once the monitor has stopped."""
        rng, stats = self.rng, self.stats
        for client in list(self.clients):
            if client.closed or rng.random() < 0.01:
                client.close()
                self.clients.remove(client)
                self.connect()
                continue
            if rng.random() < 0.5:
                client.act()
        if rng.random() < 0.02:
            self.agent.stalled = not self.agent.stalled
        for _ in range(rng.randint(1, 8)):
            frame = self.agent.frame()
            if rng.random() < self.mutation_rate:
                name = rng.choice(list(MUTATIONS))
                frame = MUTATIONS[name](frame, rng)
                stats.mutated += 1
            self.agent.out += frame
            stats.frames += 1
        with contextlib.redirect_stderr(self.log):
            for _ in range(3):
                self.agent.flush()
                for client in self.clients:
                    client.flush()
                self.mon.next_sweep = 0.0  # expiry checked every turn, not every second
                try:
                    self.mon.step(0)
                except Exception:
                    stats.crashes.append(traceback.format_exc())
                    self.crashed = True
                    return False
                if not self.mon.running:
                    return False
                if not self.agent.stalled:
                    self.agent.take(self.agent.read())
                for client in self.clients:
                    if not client.stalled:
                        client.take(client.read())
        self.check()
        return True

    def check(self) -> None:
        mon, stats = self.mon, self.stats
        caps = monitor
        frame_max = protocol.HEADER.size + protocol.MAX_PAYLOAD
        bounds = {"agent_out": (len(mon.agent_out), caps.MAX_AGENT_BUFFER + frame_max),
                  "pending": (len(mon.pending), caps.MAX_PENDING),
                  "dns": (len(mon.dns), caps.MAX_DNS_QUERIES),
                  "agent_reader": (mon.agent_reader.pending if mon.agent_reader else 0, (1 << 18) + frame_max)}
        for conn in mon.conns.values():
            # Responses to its waiting requests, and the windows of each process made for it (output,
            # and credit for its stdin) in frames as small as one byte.
            limit = (caps.MAX_CLIENT_BUFFER + caps.MAX_CLIENT_REQUESTS * frame_max
                     + self.made.get(id(conn), 0) * 3 * WINDOW * (protocol.HEADER.size + 4))
            stats.mark("client_out", len(conn.out))
            stats.mark("client_reader", conn.reader.pending)
            stats.mark("client_requests", conn.requests)
            if len(conn.out) > limit or conn.reader.pending > 65536 + frame_max \
                    or conn.requests > caps.MAX_CLIENT_REQUESTS:
                stats.violations.append(f"client: out {len(conn.out)}, reader {conn.reader.pending}, "
                                        f"requests {conn.requests}")
        for name, (value, bound) in bounds.items():
            stats.mark(name, value)
            if value > bound:
                stats.violations.append(f"{name}: {value} > {bound}")

    def close(self) -> None:
        with contextlib.redirect_stderr(self.log):
            self.mon.close()
        self.listener.close()
        self.agent.close()
        for client in self.clients:
            client.close()
        os.unlink(self.path)


class DnsServer:
    """Stands for Docker's DNS: answers some queries (the monitor relays to it), drops others."""

    def __init__(self, rng: random.Random, answer_rate: float = 0.7) -> None:
        self.rng, self.answer_rate = rng, answer_rate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()

    def serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            if self.rng.random() < self.answer_rate:
                self.sock.sendto(data[::-1] + os.urandom(self.rng.randint(0, 600)), peer)


def run(frames: int, seed: int, mutation_rates: tuple[float, ...] = (0.002, 0.01, 0.05, 0.2), small_caps: bool = True,
        progress: Callable[[Stats], None] | None = None, every: int = 100_000) -> Stats:
    """Fuzz until ``frames`` frames have been sent; the monitor's module constants are restored after."""
    rng = random.Random(seed)
    stats = Stats()
    saved = {name: getattr(monitor, name) for name in (*SMALL_CAPS, "DOCKER_DNS")}
    dns = DnsServer(rng)
    monitor.DOCKER_DNS = dns.address
    if small_caps:
        for name, value in SMALL_CAPS.items():
            setattr(monitor, name, value)
    next_report = every
    try:
        with tempfile.TemporaryDirectory() as work:
            while stats.frames < frames:
                session = Session(work, rng, stats, rng.choice(mutation_rates))
                stats.sessions += 1
                try:
                    while stats.frames < frames:
                        if not session.turn():
                            stats.stopped += not session.crashed
                            break
                        dns.serve()
                        if progress is not None and stats.frames >= next_report:
                            next_report += every
                            progress(stats)
                finally:
                    session.close()
    finally:
        for name, value in saved.items():
            setattr(monitor, name, value)
        dns.sock.close()
    return stats

