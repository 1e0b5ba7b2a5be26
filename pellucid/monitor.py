"""The sandbox monitor: one per VM, a daemon. It owns QEMU and the one channel to the agent, and
multiplexes that channel for the runtime commands and the shims that connect to its socket
(the role of Clear Containers' proxy). Requests are forwarded with their ids remapped; a
process's output and exit go to the connection that created it.

Run as ``python -m pellucid.monitor VM_DIR``; ``VM_DIR/vm.json`` says what to boot. It reports
readiness (or the boot error) as one JSON line on the file descriptor given by --ready-fd.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import sys
import time

from . import messages, protocol, sockets
from .config import load as load_config
from .errors import PellucidError, VMError
from .host_messages import MonitorReady, Nic, VMDescription, VMInfo
from .runtime import netns
from .vm import accel, cloning, qemu_args
from .vm.assets import resolve
from .vm.machine import VM
from .vm.spec import make_spec

SOCKET = "monitor.sock"
# Backpressure, never a dropped connection: a client is not read from while this much waits for it
# (it is not reading its responses) or for the agent. Stream data is bounded by its windows.
MAX_CLIENT_BUFFER = 4 << 20
MAX_AGENT_BUFFER = 4 << 20
# Requests the monitor answers itself; the rest go to the agent.
LOCAL_OPS = (messages.Shutdown.OP,)
CREATING_OPS = (messages.CreateContainer.OP, messages.ExecProcess.OP)
DOCKER_DNS = ("127.0.0.11", 53)


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader()
        self.out = bytearray()
        self.processes: set[int] = set()
        self.events = 0  # the selector events it is registered for


class Monitor:
    def __init__(self, vm_dir: str) -> None:
        self.vm_dir = vm_dir
        path = os.path.join(vm_dir, "vm.json")
        try:
            with open(path, "rb") as f:
                self.desc = VMDescription.from_json(f.read())
        except ValueError as err:
            raise VMError(f"{path}: {err}") from err
        self.selector = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.pending: dict[int, tuple[Conn | None, int, str]] = {}  # agent id -> (conn, client id, op)
        self.dns: dict[int, tuple[socket.socket, int, float]] = {}  # fd -> (socket, query id, sent at)
        self.owners: dict[int, Conn] = {}  # process number -> connection that created it
        self.windows: dict[int, protocol.Window] = {}  # stream id -> its sender's credit, per live process
        self.next_id = 1
        self.vm: VM | None = None
        self.info = VMInfo()
        self.running = True
        self.agent_reader: protocol.FrameReader | None = None
        self.agent_out = bytearray()
        self._tap_fds: list[int] = []

    # Boot.

    def boot(self) -> None:
        desc = self.desc
        cfg = load_config(desc.config or None)
        assets = resolve(cfg)
        accelerator, _ = accel.choose(cfg, assets, os.path.dirname(self.vm_dir.rstrip("/")))
        fs = cfg.filesystem
        shares = tuple(qemu_args.Share(s.tag, s.path) for s in desc.shares)
        if fs.volume_tag != messages.SHARE_TAG:  # the volumes' own device on the same directory
            shares += tuple(qemu_args.Share(fs.volume_tag, s.path) for s in shares if s.tag == messages.SHARE_TAG)
        net = desc.network
        nics = tuple(self._nic(n) for n in net.nics)
        console = os.path.join(self.vm_dir, "console.log") if cfg.hypervisor.debug_console else ""
        spec = make_spec(cfg, assets, accelerator, name=f"pellucid-{desc.id}", console_file=console,
                         shares=shares, nics=nics, vcpus=desc.vcpus or None, memory_mib=desc.memory_mib or None)
        self.vm, template = None, ""
        if cfg.hypervisor.templates:
            try:
                self.vm, template = cloning.start(cfg, spec, self.vm_dir)
            except (PellucidError, OSError) as err:
                print(f"pellucid-monitor: booting cold, not as a clone: {err}", file=sys.stderr)
        if self.vm is None:
            self.vm = VM(spec, self.vm_dir)
            self.vm.start()
            self.vm.handshake(cfg.hypervisor.boot_timeout)
        hello, spec = self.vm.hello, self.vm.spec  # a clone's size is its class's
        assert hello is not None and self.vm.agent is not None and self.vm.timeline is not None
        for fd in self._tap_fds:
            os.close(fd)
        for share in shares:
            self.vm.agent.call(messages.MountShare(share.tag, fs.cache_of(share.tag), fs.msize),
                               timeout=cfg.hypervisor.boot_timeout)
        if net.nics:
            self.vm.agent.call(net.for_guest(), timeout=cfg.hypervisor.boot_timeout)
        self.info = VMInfo(accelerator=accelerator, machine=spec.machine, guest_kernel=hello.kernel,
                           boot_id=hello.boot_id, rootfs_dax=hello.rootfs_dax,
                           boot_ms=round(self.vm.timeline.agent_ms), qemu_pid=self.vm.pid,
                           vcpus=spec.vcpus, memory_mib=spec.memory_mib, template=template,
                           share_cache=fs.cache, volume_cache=fs.cache_of(fs.volume_tag))

    def _nic(self, nic: Nic) -> qemu_args.Nic:
        """A macvtap is handed to QEMU as an open /dev/tapN; a plain tap by name."""
        if nic.device:
            fd = os.open(nic.device, os.O_RDWR)
            self._tap_fds.append(fd)
            return qemu_args.Nic(mac=nic.mac, fd=fd, mtu=nic.mtu)
        return qemu_args.Nic(mac=nic.mac, tap=nic.tap, mtu=nic.mtu)

    # Serving.

    def serve(self, listener: socket.socket) -> None:
        assert self.vm is not None and self.vm.agent is not None
        agent = self.vm.agent.sock
        agent.setblocking(False)
        listener.setblocking(False)
        self.selector.register(agent, selectors.EVENT_READ, self._on_agent)
        self.selector.register(listener, selectors.EVENT_READ, lambda mask: self._accept(listener))
        # Bytes the boot-time client read past its last response are the start of what we serve.
        self.agent_reader = self.vm.agent.reader
        for frame in self.agent_reader.feed(b""):
            self._from_agent(frame)
        while self.running:
            for key, mask in self.selector.select(1.0):
                key.data(mask)
            if self.vm.proc is not None and self.vm.proc.poll() is not None:
                self.running = False
            self._expire_dns()

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = Conn(sock)
        self.conns[sock.fileno()] = conn
        self._watch(conn)

    def _watch(self, conn: Conn) -> None:
        """Register ``conn`` for writing while bytes wait for it, for reading unless it or the agent is behind."""
        events = selectors.EVENT_WRITE if conn.out else 0
        if len(conn.out) < MAX_CLIENT_BUFFER and len(self.agent_out) < MAX_AGENT_BUFFER:
            events |= selectors.EVENT_READ
        if events == conn.events:
            return
        if not events:
            self.selector.unregister(conn.sock)
        elif conn.events:
            self.selector.modify(conn.sock, events, lambda mask, c=conn: self._on_conn(c, mask))
        else:
            self.selector.register(conn.sock, events, lambda mask, c=conn: self._on_conn(c, mask))
        conn.events = events

    def _close(self, conn: Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        self.conns.pop(conn.sock.fileno(), None)
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        for number in conn.processes:
            self._orphan(number)
        conn.processes.clear()

    def _opened(self, conn: Conn, number: int) -> None:
        """Process ``number`` was made for ``conn``: its streams start with full windows."""
        for fd in (protocol.STDIN, protocol.STDOUT, protocol.STDERR):
            self.windows[protocol.stream_id(number, fd)] = protocol.Window()
        if conn.sock.fileno() < 0:
            self._orphan(number)
            return
        self.owners[number] = conn
        conn.processes.add(number)

    def _orphan(self, number: int) -> None:
        """The connection of process ``number`` is gone: its stdin ends and its output is discarded."""
        self.owners.pop(number, None)
        if self.running:
            self._send_agent(protocol.stream(protocol.stream_id(number, protocol.STDIN), b""))

    def _ended(self, number: int) -> None:
        """Process ``number`` has exited and its streams are closed."""
        for fd in (protocol.STDIN, protocol.STDOUT, protocol.STDERR):
            self.windows.pop(protocol.stream_id(number, fd), None)
        conn = self.owners.pop(number, None)
        if conn is not None:
            conn.processes.discard(number)

    def _send(self, conn: Conn, data: bytes) -> None:
        if conn.sock.fileno() < 0:
            return
        conn.out += data
        self._watch(conn)

    def _send_agent(self, data: bytes) -> None:
        assert self.vm is not None and self.vm.agent is not None
        behind = len(self.agent_out) >= MAX_AGENT_BUFFER
        self.agent_out += data
        self.selector.modify(self.vm.agent.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_agent)
        if not behind and len(self.agent_out) >= MAX_AGENT_BUFFER:
            for conn in list(self.conns.values()):
                self._watch(conn)

    def _on_conn(self, conn: Conn, mask: int) -> None:
        if conn.sock.fileno() < 0:
            return  # closed by an earlier callback of the same select
        if mask & selectors.EVENT_WRITE and conn.out:
            try:
                n = conn.sock.send(conn.out)
                del conn.out[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._close(conn)
                return
            self._watch(conn)
        if mask & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close(conn)
                return
            try:
                for frame in conn.reader.feed(data):
                    self._from_client(conn, frame)
            except protocol.ProtocolError as err:
                print(f"pellucid-monitor: bad frame from a client: {err}", file=sys.stderr)
                self._close(conn)

    def _from_client(self, conn: Conn, frame: protocol.Frame) -> None:
        if frame.kind in (protocol.STREAM, protocol.CREDIT):
            number, fd = protocol.split_stream_id(frame.id)
            window = self.windows.get(frame.id)
            if number not in conn.processes or window is None:
                return
            if frame.kind == protocol.STREAM and fd == protocol.STDIN:
                window.take(len(frame.payload))
                self._send_agent(protocol.stream(frame.id, frame.payload))
            elif frame.kind == protocol.CREDIT and fd != protocol.STDIN:
                granted = protocol.parse_credit(frame)
                window.grant(granted)
                self._send_agent(protocol.credit(frame.id, granted))
            return
        if frame.kind != protocol.REQUEST:
            return
        op = protocol.field(frame.json(), "op", str, max_len=64)
        if op in LOCAL_OPS:
            self._local(conn, frame.id, op)
            return
        self._send_agent(protocol.encode(protocol.REQUEST, self._agent_id(conn, frame.id, op), frame.payload))

    def _agent_id(self, conn: Conn | None, client_id: int, op: str) -> int:
        agent_id = self.next_id
        self.next_id = self.next_id % 0xFFFFFFFF + 1
        self.pending[agent_id] = (conn, client_id, op)
        return agent_id

    def _local(self, conn: Conn, id: int, op: str) -> None:
        if op == messages.Shutdown.OP:
            self.running = False
            self._send(conn, protocol.response_ok(id))
            self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            conn.sock.sendall(conn.out)
            conn.out.clear()
        except OSError:
            pass

    def _on_agent(self, mask: int) -> None:
        assert self.vm is not None and self.vm.agent is not None
        sock = self.vm.agent.sock
        if mask & selectors.EVENT_WRITE and self.agent_out:
            behind = len(self.agent_out) >= MAX_AGENT_BUFFER
            try:
                n = sock.send(self.agent_out)
                del self.agent_out[:n]
            except BlockingIOError:
                pass
            if not self.agent_out:
                self.selector.modify(sock, selectors.EVENT_READ, self._on_agent)
            if behind and len(self.agent_out) < MAX_AGENT_BUFFER:
                for conn in list(self.conns.values()):
                    self._watch(conn)
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(1 << 18)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.running = False
                return
            try:
                assert self.agent_reader is not None
                for frame in self.agent_reader.feed(data):
                    self._from_agent(frame)
            except protocol.ProtocolError as err:
                # A guest that breaks the protocol is not trusted further: stop it.
                print(f"pellucid-monitor: agent broke the protocol: {err}; stopping the VM", file=sys.stderr)
                self.running = False

    def _from_agent(self, frame: protocol.Frame) -> None:
        if frame.kind == protocol.RESPONSE:
            entry = self.pending.pop(frame.id, None)
            if entry is None:
                return
            conn, client_id, op = entry
            if conn is None:
                return  # the monitor's own request (a DNS reply): nothing to route
            if op in CREATING_OPS:
                number = _created_process(frame)
                if number is not None:
                    self._opened(conn, number)
            self._send(conn, protocol.encode(protocol.RESPONSE, client_id, frame.payload))
        elif frame.kind in (protocol.STREAM, protocol.CREDIT):
            self._stream_from_agent(frame)
        elif frame.kind == protocol.EVENT:
            event = messages.read_event(frame.json())  # an invalid one stops the VM, as a bad frame does
            if isinstance(event, messages.DnsQuery):
                self._dns_query(event)
            elif isinstance(event, messages.Exit):
                owner = self.owners.get(event.process)
                if owner is not None:
                    self._send(owner, protocol.encode(protocol.EVENT, 0, frame.payload))
                self._ended(event.process)

    def _stream_from_agent(self, frame: protocol.Frame) -> None:
        """Output (checked against its window) to the process's connection, or discarded if it has
        gone; credit for stdin back to the connection that sends it."""
        number, fd = protocol.split_stream_id(frame.id)
        window = self.windows.get(frame.id)
        if window is None:
            return  # a stream of no live process
        owner = self.owners.get(number)
        if frame.kind == protocol.CREDIT:
            if fd != protocol.STDIN:
                raise protocol.ProtocolError(f"the agent granted credit on its own stream {frame.id}")
            granted = protocol.parse_credit(frame)
            window.grant(granted)
            if owner is not None:
                self._send(owner, protocol.credit(frame.id, granted))
            return
        if fd == protocol.STDIN:
            raise protocol.ProtocolError(f"the agent sent data on stdin stream {frame.id}")
        window.take(len(frame.payload))
        if owner is not None:
            self._send(owner, protocol.stream(frame.id, frame.payload))
        elif frame.payload:
            window.grant(len(frame.payload))
            self._send_agent(protocol.credit(frame.id, len(frame.payload)))

    # Docker's embedded DNS, asked in the container's namespace on the guest's behalf.

    def _dns_query(self, query: messages.DnsQuery) -> None:
        if len(self.dns) >= 256:
            return
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except OSError:
            return
        try:
            sock.connect(DOCKER_DNS)
            sock.send(query.data)
        except OSError:
            sock.close()
            return
        self.dns[sock.fileno()] = (sock, query.query, time.monotonic())
        self.selector.register(sock, selectors.EVENT_READ, lambda mask, s=sock: self._dns_answer(s))

    def _dns_answer(self, sock: socket.socket) -> None:
        _, qid, _ = self.dns.pop(sock.fileno())
        self.selector.unregister(sock)
        try:
            answer = sock.recv(messages.MAX_DNS)
        except OSError:
            answer = b""
        sock.close()
        if answer:
            reply = messages.DnsReply(query=qid, data=answer)
            self._send_agent(reply.encode(self._agent_id(None, 0, reply.OP)))

    def _expire_dns(self) -> None:
        now = time.monotonic()
        for fd, (sock, _, sent) in list(self.dns.items()):
            if now - sent > 10:
                del self.dns[fd]
                self.selector.unregister(sock)
                sock.close()

    def close(self) -> None:
        self.running = False
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.vm is not None:
            self.vm.stop()


def _created_process(frame: protocol.Frame) -> int | None:
    """The process number a successful create_container or exec_process response carries."""
    try:
        msg = frame.json()
        return messages.ProcessResult.from_json(msg.get("result")).process if msg.get("ok") is True else None
    except protocol.ProtocolError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pellucid-monitor")
    p.add_argument("vm_dir")
    p.add_argument("--ready-fd", type=int, required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    ready = os.fdopen(args.ready_fd, "w")
    try:
        monitor = Monitor(args.vm_dir)
    except (PellucidError, OSError) as err:
        ready.write(MonitorReady(ok=False, error=str(err)).to_json() + "\n")
        ready.close()
        return 1
    path = os.path.join(args.vm_dir, SOCKET)
    try:
        try:
            if monitor.desc.netns:
                netns.enter(monitor.desc.netns)  # QEMU and its taps live in the container's namespace
            monitor.boot()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.bind(listener, path)
            os.chmod(path, 0o600)
            listener.listen(64)
        except (PellucidError, OSError) as err:
            ready.write(MonitorReady(ok=False, error=str(err)).to_json() + "\n")
            ready.close()
            return 1
        ready.write(MonitorReady(ok=True, info=monitor.info).to_json() + "\n")
        ready.close()
        monitor.serve(listener)
        return 0
    finally:
        monitor.close()
        try:
            os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
