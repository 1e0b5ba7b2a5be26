"""The sandbox monitor: one per VM, a daemon. It owns QEMU and the one channel to the agent, and
multiplexes that channel for the runtime commands and the shims that connect to its socket
(the role of Clear Containers' proxy). Requests are forwarded with their ids remapped; a
process's output and exit go to the connection that created it.

Run as ``python -m pellucid.monitor VM_DIR --go-fd G --ready-fd R`` (pellucid.runtime.sandbox):
started early, it loads the boot path while its caller prepares the network, then waits for "go"
on G, reads ``VM_DIR/vm.json`` (what to boot) and boots; EOF on G instead means its caller gave up.
It reports readiness (or the boot error) as one JSON line on R, then execs
``python -m pellucid.monitor VM_DIR --serve FD``, a fresh interpreter that adopts QEMU, the agent's
channel and the listening socket (FD: a memfd holding a MonitorHandoff) and serves the VM's life:
the boot path's modules (configuration, accelerator probe, templates, QEMU's command line) would
otherwise stay resident in every VM's monitor. The pid, its start time and QEMU's parent stay
the same across the exec.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time

from . import messages, protocol, sockets, timeline
from .errors import PellucidError, VMError
from .host_messages import MONITOR_GO, MonitorHandoff, MonitorReady, Nic, VMDescription, VMInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .vm import qemu_args
    from .vm.adopted import AdoptedVM
    from .vm.machine import VM, BootTimeline

SOCKET = "monitor.sock"
# Every buffer is bounded, by backpressure, never by a dropped connection: a client is not read
# from while this much waits for it (it is not reading its responses), while it has this many
# requests waiting for the agent, or while the agent is behind (it is not reading). Stream data is
# bounded by its windows; nothing the agent sends makes the monitor write to the agent without bound.
MAX_CLIENT_BUFFER = 4 << 20
MAX_CLIENT_REQUESTS = 32
MAX_AGENT_BUFFER = 4 << 20
MAX_PENDING = 1024  # requests waiting for the agent, of all clients
PENDING_SECONDS = 300.0  # longer than any client waits: then the monitor answers in the agent's stead
MAX_DNS_QUERIES = 256
DNS_SECONDS = 10.0
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
        self.requests = 0  # its requests waiting for the agent
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
        self.pending: dict[int, tuple[Conn, int, str, float]] = {}  # agent id -> (conn, client id, op, deadline)
        self.dns: dict[int, tuple[socket.socket, int, float]] = {}  # fd -> (socket, query id, sent at)
        self.live: set[int] = set()  # numbers of the processes made and not yet exited
        self.owners: dict[int, Conn] = {}  # process number -> connection that created it
        self.windows: dict[int, protocol.Window] = {}  # stream id -> its sender's credit, per open stream
        self.owed: dict[int, int] = {}  # output stream id -> bytes discarded (its client left), not yet credited
        self.backlog: dict[Conn, None] = {}  # clients with frames read but not acted on (they fell behind)
        self.blocked = False  # whether the agent was behind at the end of the last turn: no client is read
        self.next_sweep = 0.0
        self.next_id = 1
        self.vm: VM | AdoptedVM | None = None
        self.info = VMInfo()
        self.running = True
        self.agent_reader: protocol.FrameReader | None = None
        self.agent_out = bytearray()
        self._tap_fds: list[int] = []

    # Boot.

    def boot(self) -> None:
        from .config import load as load_config
        from .vm import accel, cloning, qemu_args
        from .vm.assets import resolve
        from .vm.machine import VM
        from .vm.spec import make_spec
        desc = self.desc
        prepare = timeline.now()
        cfg = load_config(desc.config or None)
        assets = resolve(cfg)
        accelerator, _ = accel.choose(cfg, assets, os.path.dirname(self.vm_dir.rstrip("/")))
        timeline.span("configuration, assets, accelerator", prepare)
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
        _boot_spans(self.vm.timeline, clone=bool(template))
        for fd in self._tap_fds:
            os.close(fd)
        for share in shares:
            with timeline.step("9p mount in the guest"):
                self.vm.agent.call(messages.MountShare(share.tag, fs.cache_of(share.tag), fs.msize),
                                   timeout=cfg.hypervisor.boot_timeout)
        if net.nics:
            with timeline.step("guest network set-up"):
                self.vm.agent.call(net.for_guest(), timeout=cfg.hypervisor.boot_timeout)
        self.info = VMInfo(accelerator=accelerator, machine=spec.machine, guest_kernel=hello.kernel,
                           boot_id=hello.boot_id, rootfs_dax=hello.rootfs_dax,
                           boot_ms=round(self.vm.timeline.agent_ms), qemu_pid=self.vm.pid,
                           vcpus=spec.vcpus, memory_mib=spec.memory_mib, template=template,
                           share_cache=fs.cache, volume_cache=fs.cache_of(fs.volume_tag))

    def _nic(self, nic: Nic) -> qemu_args.Nic:
        """A macvtap is handed to QEMU as an open /dev/tapN; a plain tap by name."""
        from .vm import qemu_args
        if nic.device:
            fd = os.open(nic.device, os.O_RDWR)
            self._tap_fds.append(fd)
            return qemu_args.Nic(mac=nic.mac, fd=fd, mtu=nic.mtu)
        return qemu_args.Nic(mac=nic.mac, tap=nic.tap, mtu=nic.mtu)

    # Serving.

    def serve(self, listener: socket.socket) -> None:
        self.listen(listener)
        while self.running:
            self.step(1.0)

    def listen(self, listener: socket.socket) -> None:
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

    def step(self, timeout: float) -> None:
        """One turn of the event loop: what is ready, then what waits on time or on room."""
        assert self.vm is not None
        for key, mask in self.selector.select(timeout):
            key.data(mask)
        if self.vm.proc is not None and self.vm.proc.poll() is not None:
            self.running = False
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + 1.0
            self._expire_dns(now)
            self._expire_pending(now)
        self._repay()
        for conn in list(self.backlog):
            if conn.sock.fileno() < 0:
                del self.backlog[conn]
            elif self._may_read(conn):
                self._take_frames(conn, b"")
        blocked = self._behind()
        if blocked != self.blocked:
            self.blocked = blocked
            for conn in list(self.conns.values()):
                self._watch(conn)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = Conn(sock)
        self.conns[sock.fileno()] = conn
        self._watch(conn)

    def _behind(self) -> bool:
        """Whether the agent is behind: it does not read what it is sent, or does not answer."""
        return len(self.agent_out) >= MAX_AGENT_BUFFER or len(self.pending) >= MAX_PENDING

    def _full(self, conn: Conn) -> bool:
        """Whether ``conn`` is behind: it does not read its answers, or has too many requests waiting."""
        return len(conn.out) >= MAX_CLIENT_BUFFER or conn.requests >= MAX_CLIENT_REQUESTS

    def _may_read(self, conn: Conn) -> bool:
        return not self._full(conn) and not self._behind()

    def _watch(self, conn: Conn) -> None:
        """Register ``conn`` for writing while bytes wait for it, for reading unless it is behind, or the
        agent was at the end of the last turn (a change within a turn is seen by the reads themselves,
        which leave the client in the backlog; each turn ends by going through it)."""
        events = selectors.EVENT_WRITE if conn.out else 0
        if not self._full(conn) and not self.blocked:
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
        self.backlog.pop(conn, None)
        for number in conn.processes:
            self._orphan(number)
        conn.processes.clear()
        # Its requests' answers are not waited for; a creating request's is, to close the new process's stdin.
        for agent_id, (owner, _, op, _) in list(self.pending.items()):
            if owner is conn and op not in CREATING_OPS:
                del self.pending[agent_id]

    def _opened(self, conn: Conn, number: int) -> None:
        """Process ``number`` was made for ``conn``: its streams start with full windows."""
        if number in self.live:
            raise protocol.ProtocolError(f"the agent made process {number} twice")
        self.live.add(number)
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
        stdin = protocol.stream_id(number, protocol.STDIN)
        if self.running and self.windows.pop(stdin, None) is not None:
            self._send_agent(protocol.stream(stdin, b""))

    def _ended(self, number: int) -> None:
        """Process ``number`` has exited and its streams are closed."""
        self.live.discard(number)
        for fd in (protocol.STDIN, protocol.STDOUT, protocol.STDERR):
            self.windows.pop(protocol.stream_id(number, fd), None)
            self.owed.pop(protocol.stream_id(number, fd), None)
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
        self.agent_out += data
        self.selector.modify(self.vm.agent.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_agent)

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
            if not self._may_read(conn):
                self.backlog[conn] = None  # the agent fell behind within this turn
                return
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close(conn)
                return
            self._take_frames(conn, data)

    def _take_frames(self, conn: Conn, data: bytes) -> None:
        """Act on ``conn``'s frames while it may be read; the rest wait in its reader (the backlog)."""
        self.backlog.pop(conn, None)
        try:
            for frame in conn.reader.feed(data):
                self._from_client(conn, frame)
                if not self._may_read(conn):
                    self.backlog[conn] = None
                    break
        except protocol.ProtocolError as err:
            print(f"pellucid-monitor: bad frame from a client: {err}", file=sys.stderr)
            self._close(conn)
            return
        self._watch(conn)

    def _from_client(self, conn: Conn, frame: protocol.Frame) -> None:
        if frame.kind in (protocol.STREAM, protocol.CREDIT):
            number, fd = protocol.split_stream_id(frame.id)
            window = self.windows.get(frame.id)
            if number not in conn.processes or window is None:
                return
            if frame.kind == protocol.STREAM and fd == protocol.STDIN:
                window.take(len(frame.payload))
                if not frame.payload:  # its end: nothing more is taken on it
                    del self.windows[frame.id]
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

    def _agent_id(self, conn: Conn, client_id: int, op: str) -> int:
        agent_id = self._new_id()
        self.pending[agent_id] = (conn, client_id, op, time.monotonic() + PENDING_SECONDS)
        conn.requests += 1
        return agent_id

    def _new_id(self) -> int:
        agent_id = self.next_id
        self.next_id = self.next_id % 0xFFFFFFFF + 1
        return agent_id

    def _expire_pending(self, now: float) -> None:
        """Requests the agent has not answered in PENDING_SECONDS are answered with an error (the
        oldest come first: the deadlines grow with the ids)."""
        for agent_id, (conn, client_id, op, deadline) in list(self.pending.items()):
            if deadline > now:
                break
            del self.pending[agent_id]
            conn.requests -= 1
            self._send(conn, protocol.response_error(
                client_id, messages.ERR_TIMEOUT, f"the agent did not answer {op!r} within {PENDING_SECONDS:g}s"))

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
            try:
                n = sock.send(self.agent_out)
                del self.agent_out[:n]
            except BlockingIOError:
                pass
            if not self.agent_out:
                self.selector.modify(sock, selectors.EVENT_READ, self._on_agent)
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
                return  # to the monitor's own request (a DNS reply), or one expired or of a client gone
            conn, client_id, op, _ = entry
            conn.requests -= 1
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
        if not frame.payload:  # its end: nothing more is taken on it
            del self.windows[frame.id]
            self.owed.pop(frame.id, None)
        if owner is not None:
            self._send(owner, protocol.stream(frame.id, frame.payload))
        elif frame.payload:
            self.owed[frame.id] = self.owed.get(frame.id, 0) + len(frame.payload)

    def _repay(self) -> None:
        """Credit for discarded output goes back to the agent, one frame per stream, only while the
        agent reads what it is sent: a guest that stops reading gets no more credit, not a longer queue."""
        if not self.owed or len(self.agent_out) >= MAX_AGENT_BUFFER:
            return
        owed, self.owed = self.owed, {}
        for sid, n in owed.items():
            self.windows[sid].grant(n)  # a closed or ended stream's debt was dropped with its window
            self._send_agent(protocol.credit(sid, n))

    # Docker's embedded DNS, asked in the container's namespace on the guest's behalf, only for a
    # container whose resolv.conf names it. A query past the bounds is dropped: its resolver retries.

    def _dns_query(self, query: messages.DnsQuery) -> None:
        if (not self.desc.network.dns_relay or len(self.dns) >= MAX_DNS_QUERIES
                or len(self.agent_out) >= MAX_AGENT_BUFFER):
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
        if answer and len(self.agent_out) < MAX_AGENT_BUFFER:
            self._send_agent(messages.DnsReply(query=qid, data=answer).encode(self._new_id()))

    def _expire_dns(self, now: float) -> None:
        for fd, (sock, _, sent) in list(self.dns.items()):
            if now - sent > DNS_SECONDS:
                del self.dns[fd]
                self.selector.unregister(sock)
                sock.close()

    def close(self) -> None:
        self.running = False
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.vm is not None:
            self.vm.stop()


def _boot_spans(boot: BootTimeline, clone: bool) -> None:
    """The VM's start on the timeline, from its boot timeline (ms since QEMU's spawn, ending now)."""
    if not timeline.enabled():
        return
    end = timeline.now()
    start = end - int(boot.agent_ms * 1e6)
    at = lambda ms: start + int(ms * 1e6)  # noqa: E731
    if clone:
        timeline.span("QEMU start + migration restore", start, at(boot.kernel_ms))
        timeline.span("clone resumed: the agent's first answer", at(boot.kernel_ms), end)
    else:
        timeline.span("QEMU start to the guest kernel", start, at(boot.kernel_ms))
        timeline.span("guest kernel to init", at(boot.kernel_ms), at(boot.init_ms))
        timeline.span("init to the agent's first answer", at(boot.init_ms), end)


def _created_process(frame: protocol.Frame) -> int | None:
    """The process number a successful create_container or exec_process response carries."""
    try:
        msg = frame.json()
        return messages.ProcessResult.from_json(msg.get("result")).process if msg.get("ok") is True else None
    except protocol.ProtocolError:
        return None


def _parse(argv: list[str]) -> tuple[str, str, tuple[int, ...]]:
    """VM_DIR --go-fd G --ready-fd R (boot) or VM_DIR --serve N (adopt a booted VM)."""
    if len(argv) == 5 and argv[1] == "--go-fd" and argv[3] == "--ready-fd" and argv[2].isdigit() \
            and argv[4].isdigit():
        return argv[0], "--boot", (int(argv[2]), int(argv[4]))
    if len(argv) == 3 and argv[1] == "--serve" and argv[2].isdigit():
        return argv[0], "--serve", (int(argv[2]),)
    raise SystemExit("usage: python -m pellucid.monitor VM_DIR (--go-fd G --ready-fd R | --serve N)")


def _load_boot_path() -> None:
    """Import what boot() needs now, while the caller still prepares the network (the serving
    monitor, a fresh interpreter, never loads them)."""
    import importlib
    for name in (".config", ".runtime.netns", ".vm.accel", ".vm.assets", ".vm.cloning", ".vm.machine",
                 ".vm.qemu_args", ".vm.spec"):
        importlib.import_module(name, __package__)


def _serve_argv(vm_dir: str, fd: int) -> list[str]:
    """This interpreter with its own flags, as the runtime started it, serving ``vm_dir``."""
    flags = sys.orig_argv[1:sys.orig_argv.index("-m")] if "-m" in sys.orig_argv else []
    return [sys.executable, *flags, "-m", "pellucid.monitor", vm_dir, "--serve", str(fd)]


def _hand_over(vm: VM, vm_dir: str, listener: socket.socket) -> None:
    """Exec the serving monitor, handing it QEMU, the agent's channel and ``listener``; returns
    only by raising."""
    handoff = vm.hand_over(listener.fileno())
    fd = os.memfd_create("pellucid-monitor-handoff", 0)  # inherited: no MFD_CLOEXEC
    os.write(fd, handoff.to_json().encode())
    os.lseek(fd, 0, os.SEEK_SET)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, _serve_argv(vm_dir, fd))


def _adopt(monitor: Monitor, fd: int) -> socket.socket:
    """The booting monitor's VM and listening socket, from the handoff in memfd ``fd``."""
    from .vm.adopted import AdoptedVM
    with os.fdopen(fd, "rb") as f:
        handoff = MonitorHandoff.from_json(f.read(1 << 20))
    monitor.vm = AdoptedVM(handoff)
    return socket.socket(fileno=handoff.listener_fd)


def main(argv: list[str] | None = None) -> int:
    vm_dir, mode, fds = _parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if mode == "--serve":
        return _serve(vm_dir, fds[0])
    timeline.begin("monitor")
    _load_boot_path()  # while the caller prepares the network
    go_fd, ready_fd = fds
    waiting = timeline.now()
    with os.fdopen(go_fd, "rb") as go:
        if go.readline(16) != MONITOR_GO:
            return 0  # the command that started us gave up before the VM was described
    timeline.span("wait for go (the network)", waiting)
    ready = os.fdopen(ready_fd, "w")
    try:
        monitor = Monitor(vm_dir)
        timeline.set_id(monitor.desc.id)
    except (PellucidError, OSError) as err:
        ready.write(MonitorReady(ok=False, error=str(err)).to_json() + "\n")
        ready.close()
        return 1
    path = os.path.join(vm_dir, SOCKET)
    ours = None
    try:
        try:
            if monitor.desc.netns:
                from .runtime import netns
                netns.enter(monitor.desc.netns)  # QEMU and its taps live in the container's namespace
            monitor.boot()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.bind(listener, path)
            os.chmod(path, 0o600)
            ours = os.stat(path)
            listener.listen(64)
        except (PellucidError, OSError) as err:
            ready.write(MonitorReady(ok=False, error=str(err)).to_json() + "\n")
            ready.close()
            return 1
        ready.write(MonitorReady(ok=True, info=monitor.info).to_json() + "\n")
        ready.close()
        timeline.span("VM ready (reported)", timeline.now())
        assert monitor.vm is not None
        _hand_over(monitor.vm, vm_dir, listener)  # type: ignore[arg-type]  # booted: a VM
        return 1
    finally:  # reached only when the boot or the exec failed
        monitor.close()
        _unlink_if(path, ours)


def _serve(vm_dir: str, fd: int) -> int:
    path = os.path.join(vm_dir, SOCKET)
    ours = _stat(path)  # ours at the hand-over; it may be replaced once our container is deleted
    monitor = Monitor(vm_dir)
    try:
        listener = _adopt(monitor, fd)
        monitor.serve(listener)
        return 0
    finally:
        monitor.close()
        _unlink_if(path, ours)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _unlink_if(path: str, ours: os.stat_result | None) -> None:
    """Remove our socket, unless it has gone: a deleted container's directory moves to the
    graveyard while its VM exits, and a new container of the same id may have its own there."""
    try:
        now = os.stat(path)
        if ours is not None and (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
            os.unlink(path)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
