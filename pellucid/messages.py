"""The messages of the host/guest protocol: every request and its result, every event, the error
kinds and the guest paths both sides name. :mod:`pellucid.protocol` frames them; the two modules
are the whole contract, and the guest image carries both.

Each message is a record: a plain class with ``__slots__`` (the guest imports this module at boot,
where ``typing`` and ``dataclasses`` cost a third of a second under TCG). The sending side builds
a record from typed arguments and sends ``to_json()``; the receiving side builds it with
``from_json()``, which checks every field (type, bounds, syntax, range) and raises
:class:`~pellucid.protocol.ProtocolError` on bad input, answered as an ``invalid`` error.
"""

from __future__ import annotations

from . import protocol
from .protocol import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time: see the docstring
    from typing import Any, ClassVar, Self

# Guest paths both sides name.
GUEST_RUN = "/run/pellucid"
GUEST_SHARED = f"{GUEST_RUN}/shared"  # the host's 9p shares are mounted at GUEST_SHARED/<tag>
GUEST_BUNDLES = f"{GUEST_RUN}/bundles"  # the agent writes each container's config.json here
SHARE_TAG = "sandbox"  # the 9p tag of the sandbox's shared directory (container root filesystems, binds)
# The same directory exported a second time, for the volumes, when they are mounted with another cache
# mode than the root filesystems (one 9p device serves one guest mount).
VOLUME_TAG = "volumes"


def share_mount_point(tag: str) -> str:
    """Where the guest mounts the host's share ``tag``."""
    return f"{GUEST_SHARED}/{tag}"


# Error kinds: the ``kind`` of a failed response, a short word the host may act on.
ERR_INVALID = "invalid"  # the request is malformed (a ProtocolError on the receiving side)
ERR_UNSUPPORTED = "unsupported"  # no such operation (or not enabled in this VM)
ERR_VERSION = "version"  # the host speaks another protocol version
ERR_OS = "os"  # a system call failed
ERR_NOT_FOUND = "not_found"  # no such container, process or interface
ERR_EXISTS = "exists"  # the container exists already
ERR_STOPPED = "stopped"  # the process has exited
ERR_CRUN = "crun"  # crun failed; the message is its own
ERR_NETWORK = "network"  # configuring the guest's network failed
ERR_SYSCTL = "sysctl"  # a sysctl could not be set
ERR_TIMEOUT = "timeout"  # the agent did not answer in time (the monitor answers so in its stead)

MAX_ID = 1024
MAX_DNS = 4096  # bytes of one DNS message
MAX_PROCESSES = 1 << 30  # process numbers the agent hands out are below this


# Field checks: how each field of a record is read from JSON (checked) and written to it.

class Field:
    """One field: required unless ``optional``, then ``default`` when absent or null."""

    __slots__ = ("optional", "default")

    def __init__(self, optional: bool = False, default: Any = None) -> None:
        self.optional = optional
        self.default = default

    def read(self, name: str, value: Any) -> Any:
        if value is None:
            if not self.optional:
                raise ProtocolError(f"missing field {name!r}")
            return self.default.copy() if isinstance(self.default, (list, dict)) else self.default
        return self.check(name, value)

    def check(self, name: str, value: Any) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value


class Int(Field):
    __slots__ = ("low", "high")

    def __init__(self, low: int, high: int, optional: bool = False, default: Any = None) -> None:
        super().__init__(optional, default)
        self.low, self.high = low, high

    def check(self, name: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"field {name!r} is not an integer")
        if not self.low <= value <= self.high:
            raise ProtocolError(f"field {name!r} is out of range ({value})")
        return value


class Bool(Field):
    __slots__ = ()

    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"field {name!r} is not a boolean")
        return value


class Str(Field):
    __slots__ = ("max_len",)

    def __init__(self, max_len: int, optional: bool = False, default: Any = None) -> None:
        super().__init__(optional, default)
        self.max_len = max_len

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ProtocolError(f"field {name!r} is not a string")
        if len(value) > self.max_len:
            raise ProtocolError(f"field {name!r} is too long")
        return value


class Ident(Str):
    """A name the guest uses as one path component: a container id, a share tag."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(MAX_ID)

    def check(self, name: str, value: Any) -> str:
        value = super().check(name, value)
        if not value or "/" in value or value in (".", "..") or "\0" in value:
            raise ProtocolError(f"invalid {name} {value!r}")
        return value


class Bytes(Field):
    """Bytes, base64 in JSON."""

    __slots__ = ("max_len", "min_len")

    def __init__(self, max_len: int, min_len: int = 0) -> None:
        super().__init__()
        self.max_len = max_len
        self.min_len = min_len

    def check(self, name: str, value: Any) -> bytes:
        import binascii  # only the DNS relay and a clone's reseed send bytes: kept off the boot path
        if not isinstance(value, str) or len(value) > (self.max_len + 2) // 3 * 4:
            raise ProtocolError(f"field {name!r} is not base64 of at most {self.max_len} bytes")
        try:
            data = binascii.a2b_base64(value, strict_mode=True)
        except ValueError as err:  # binascii.Error, or a plain ValueError for a non-ASCII string
            raise ProtocolError(f"field {name!r} is not base64: {err}") from err
        if not self.min_len <= len(data) <= self.max_len:
            raise ProtocolError(f"field {name!r} is not {self.min_len} to {self.max_len} bytes")
        return data

    def dump(self, value: bytes) -> str:
        import binascii
        return binascii.b2a_base64(value, newline=False).decode()


class Obj(Field):
    """A JSON object passed through whole (an OCI config, a process, resources): bounded in keys;
    the frame bounds its size."""

    __slots__ = ()

    def check(self, name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ProtocolError(f"field {name!r} is not an object")
        if len(value) > 4096:
            raise ProtocolError(f"field {name!r} has too many keys")
        return value


class ListOf(Field):
    __slots__ = ("item", "max_len")

    def __init__(self, item: Field, max_len: int, optional: bool = False) -> None:
        super().__init__(optional, [] if optional else None)
        self.item, self.max_len = item, max_len

    def check(self, name: str, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ProtocolError(f"field {name!r} is not a list")
        if len(value) > self.max_len:
            raise ProtocolError(f"field {name!r} has more than {self.max_len} items")
        return [self.item.check(f"{name}[{i}]", v) for i, v in enumerate(value)]

    def dump(self, value: list[Any]) -> list[Any]:
        return [self.item.dump(v) for v in value]


class Nested(Field):
    """A record inside a record."""

    __slots__ = ("record",)

    def __init__(self, record: type[Record]) -> None:
        super().__init__()
        self.record = record

    def check(self, name: str, value: Any) -> Record:
        try:
            return self.record.from_json(value)
        except ProtocolError as err:
            raise ProtocolError(f"{name}: {err}") from err

    def dump(self, value: Record) -> Any:
        return value.to_json()


class Record:
    """A message, or a part of one: ``FIELDS`` says how each slot is read and written."""

    __slots__ = ()
    FIELDS: ClassVar[dict[str, Field]] = {}

    @classmethod
    def from_json(cls, value: Any) -> Self:
        if not isinstance(value, dict):
            raise ProtocolError(f"{cls.__name__} is not an object")
        return cls(**{name: f.read(name, value.get(name)) for name, f in cls.FIELDS.items()})

    def to_json(self) -> Any:
        return {name: f.dump(getattr(self, name)) for name, f in self.FIELDS.items()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.FIELDS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.FIELDS)})"


class Request(Record):
    """A request: ``OP`` names it on the wire; ``RESULT`` is the record its success carries
    (None: it carries nothing)."""

    __slots__ = ()
    OP: ClassVar[str] = ""
    RESULT: ClassVar[type[Record] | None] = None

    def encode(self, id: int) -> bytes:
        return protocol.request(id, self.OP, self.to_json())

    def read_result(self, value: Any) -> Record | None:
        """The result of this request read from JSON and checked (against the request too, where
        the request says what its result must hold)."""
        return None if self.RESULT is None else self.RESULT.from_json(value)


class Event(Record):
    """An unsolicited message from the agent; ``EVENT`` names it on the wire."""

    __slots__ = ()
    EVENT: ClassVar[str] = ""

    def encode(self) -> bytes:
        return protocol.event(self.EVENT, **self.to_json())


def ok(id: int, result: Record | None) -> bytes:
    """The response frame to request ``id`` that succeeded with ``result``."""
    return protocol.response_ok(id, None if result is None else result.to_json())


class Error(Record):
    """What a failed response carries."""

    __slots__ = ("kind", "message")
    FIELDS = {"kind": Str(64), "message": Str(4096)}

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message

    def encode(self, id: int) -> bytes:
        return protocol.response_error(id, self.kind, self.message)


# The handshake.

def _check_mac(name: str, value: str) -> None:
    parts = value.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise ProtocolError(f"invalid MAC address {name} {value!r}")


class HelloResult(Record):
    """The agent's answer to a :class:`Hello` or a :class:`CloneResumed`: who it is, and when it got here.
    ``boot_id`` is empty in a template's answer (a template never reads it: see :class:`Hello`)."""

    __slots__ = ("version", "kernel", "boot_id", "rootfs_dax", "init_ms", "uptime_ms")
    FIELDS = {"version": Int(0, 255), "kernel": Str(256), "boot_id": Str(64), "rootfs_dax": Bool(),
              "init_ms": Int(0, 1 << 62), "uptime_ms": Int(0, 1 << 62)}

    def __init__(self, version: int, kernel: str, boot_id: str, rootfs_dax: bool, init_ms: int,
                 uptime_ms: int) -> None:
        self.version = version
        self.kernel = kernel
        self.boot_id = boot_id
        self.rootfs_dax = rootfs_dax  # whether the guest's / is mounted with DAX
        self.init_ms = init_ms  # guest uptime when PID 1's Python reached the agent's code
        self.uptime_ms = uptime_ms

    @classmethod
    def from_json(cls, value: Any) -> Self:
        result = super().from_json(value)
        if not all(c in "0123456789abcdef-" for c in result.boot_id):
            raise ProtocolError(f"invalid boot id {result.boot_id!r}")
        return result


def _with_boot_id(result: HelloResult, wanted: bool) -> HelloResult:
    if wanted and not result.boot_id:
        raise ProtocolError("no boot id in the answer")
    if not wanted and result.boot_id:
        raise ProtocolError("a template's answer has a boot id")
    return result


class Hello(Request):
    """The first request: the versions must match; the guest's clock is set to the host's. A
    ``template``'s agent readies itself to be saved and cloned, and answers without a boot id: the
    kernel makes the boot id at its first read, which must happen in each clone (:class:`CloneResumed`)."""

    __slots__ = ("version", "time_ns", "template")
    OP = "hello"
    RESULT = HelloResult
    FIELDS = {"version": Int(0, 255), "time_ns": Int(0, 1 << 63, optional=True),
              "template": Bool(optional=True, default=False)}

    def __init__(self, version: int, time_ns: int | None = None, template: bool = False) -> None:
        self.version = version
        self.time_ns = time_ns
        self.template = template

    def read_result(self, value: Any) -> HelloResult:
        return _with_boot_id(HelloResult.from_json(value), not self.template)


class NicSlot(Record):
    """A clone's NIC: the template's slot it is in (by the slot's MAC) and the MAC it must have."""

    __slots__ = ("slot_mac", "mac")
    FIELDS = {"slot_mac": Str(17), "mac": Str(17)}

    def __init__(self, slot_mac: str, mac: str) -> None:
        self.slot_mac = slot_mac
        self.mac = mac

    @classmethod
    def from_json(cls, value: Any) -> Self:
        slot = super().from_json(value)
        _check_mac("slot_mac", slot.slot_mac)
        _check_mac("mac", slot.mac)
        return slot


MIN_ENTROPY, MAX_ENTROPY = 32, 512  # bytes the host gives a clone to reseed its RNG from


class CloneResumed(Request):
    """The first request a clone of a template serves: reseed the guest's RNG from ``entropy``, set
    the clock, give the NICs in the template's slots their MACs; answered with the clone's own boot id."""

    __slots__ = ("entropy", "time_ns", "nics")
    OP = "clone_resumed"
    RESULT = HelloResult
    FIELDS = {"entropy": Bytes(MAX_ENTROPY, MIN_ENTROPY), "time_ns": Int(0, 1 << 63),
              "nics": ListOf(Nested(NicSlot), 64, optional=True)}

    def __init__(self, entropy: bytes, time_ns: int, nics: list[NicSlot] | None = None) -> None:
        self.entropy = entropy
        self.time_ns = time_ns
        self.nics = nics or []

    @classmethod
    def from_json(cls, value: Any) -> Self:
        request = super().from_json(value)
        slots = {nic.slot_mac.lower() for nic in request.nics}
        if len(slots) != len(request.nics):
            raise ProtocolError("two NICs in the same slot")
        return request

    def read_result(self, value: Any) -> HelloResult:
        return _with_boot_id(HelloResult.from_json(value), True)


class PingResult(Record):
    __slots__ = ("uptime_ms",)
    FIELDS = {"uptime_ms": Int(0, 1 << 62)}

    def __init__(self, uptime_ms: int) -> None:
        self.uptime_ms = uptime_ms


class Ping(Request):
    __slots__ = ()
    OP = "ping"
    RESULT = PingResult


# The guest kernel's 9p cache modes pellucid offers (6.1 has no "writeback"; "fscache" needs a cache disk).
# "mmap": only mmap'ed pages cached, every lookup and read asks the host (coherent).
# "loose": dentries, attributes and pages cached, writes written back later: the agent writes back
# before a process's exit is reported and on pause, and drops the caches before an exec.
SHARE_CACHES = ("none", "mmap", "loose")
SHARE_CACHES_CACHED = ("loose",)  # the guest keeps pages, names and attributes it read
MSIZE_MIN, MSIZE_MAX = 8192, 512000  # 6.1's virtio transport caps msize at 125 pages less 3


class MountShare(Request):
    """Mount the host's 9p share ``tag`` at :func:`share_mount_point`, with ``cache`` (one of
    :data:`SHARE_CACHES`) and ``msize``, the largest 9p message."""

    __slots__ = ("tag", "cache", "msize")
    OP = "mount_share"
    FIELDS = {"tag": Ident(), "cache": Str(16, optional=True, default="mmap"),
              "msize": Int(MSIZE_MIN, MSIZE_MAX, optional=True, default=262144)}

    def __init__(self, tag: str, cache: str = "mmap", msize: int = 262144) -> None:
        self.tag = tag
        self.cache = cache
        self.msize = msize

    @classmethod
    def from_json(cls, value: Any) -> Self:
        share = super().from_json(value)
        if share.cache not in SHARE_CACHES:
            raise ProtocolError(f"unknown 9p cache mode {share.cache!r}")
        return share


class SyncShares(Request):
    """Write back what the guest holds dirty for the host's shares; with ``invalidate``, also drop
    what it caches of them, so that the next lookup and read see the host's files as they are now."""

    __slots__ = ("invalidate",)
    OP = "sync_shares"
    FIELDS = {"invalidate": Bool()}

    def __init__(self, invalidate: bool) -> None:
        self.invalidate = invalidate


# The network.

def _check_ip(name: str, value: str, family: int) -> None:
    """``value`` is an IPv``family`` address, as the guest's netlink code will encode it."""
    import socket  # here, not at the top: only configure_network needs it, and both sides have it loaded by then
    try:
        socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, value)
    except (OSError, ValueError):
        raise ProtocolError(f"{name}: {value!r} is not an IPv{family} address") from None


def _check_prefix(name: str, value: int, family: int) -> None:
    if value > (32 if family == 4 else 128):
        raise ProtocolError(f"{name}: bad prefix length {value} for IPv{family}")


class Address(Record):
    __slots__ = ("family", "address", "prefixlen")
    FIELDS = {"family": Int(4, 6), "address": Str(64), "prefixlen": Int(0, 128)}

    def __init__(self, family: int, address: str, prefixlen: int) -> None:
        self.family = family  # 4 or 6
        self.address = address
        self.prefixlen = prefixlen

    @classmethod
    def from_json(cls, value: Any) -> Self:
        addr = super().from_json(value)
        if addr.family not in (4, 6):
            raise ProtocolError(f"bad address family {addr.family}")
        _check_ip("address", addr.address, addr.family)
        _check_prefix("address", addr.prefixlen, addr.family)
        return addr


class Nic(Record):
    """An interface of the container's namespace, which the VM's NIC with the same MAC becomes."""

    __slots__ = ("name", "mac", "mtu", "addresses")
    FIELDS = {"name": Str(15), "mac": Str(17), "mtu": Int(68, 65535, optional=True),
              "addresses": ListOf(Nested(Address), 256, optional=True)}

    def __init__(self, name: str, mac: str, mtu: int | None = None, addresses: list[Address] | None = None) -> None:
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.addresses = addresses or []

    @classmethod
    def from_json(cls, value: Any) -> Self:
        nic = super().from_json(value)
        if not nic.name or "/" in nic.name or nic.name in (".", ".."):
            raise ProtocolError(f"invalid interface name {nic.name!r}")
        _check_mac("mac", nic.mac)
        return nic


class Route(Record):
    """A route of the container's namespace; ``dst`` empty is the default route, ``gateway``
    empty a link route."""

    __slots__ = ("family", "dst", "dst_len", "gateway", "device", "scope")
    FIELDS = {"family": Int(4, 6), "dst": Str(64, optional=True, default=""), "dst_len": Int(0, 128),
              "gateway": Str(64, optional=True, default=""), "device": Str(15), "scope": Int(0, 255)}

    def __init__(self, family: int, dst: str, dst_len: int, gateway: str, device: str, scope: int) -> None:
        self.family = family
        self.dst = dst
        self.dst_len = dst_len
        self.gateway = gateway
        self.device = device
        self.scope = scope

    @classmethod
    def from_json(cls, value: Any) -> Self:
        route = super().from_json(value)
        if route.family not in (4, 6):
            raise ProtocolError(f"bad route family {route.family}")
        if route.dst:
            _check_ip("route destination", route.dst, route.family)
        if route.gateway:
            _check_ip("route gateway", route.gateway, route.family)
        _check_prefix("route destination", route.dst_len, route.family)
        return route


class NetworkResult(Record):
    __slots__ = ("interfaces",)
    FIELDS = {"interfaces": ListOf(Str(15), 64)}

    def __init__(self, interfaces: list[str]) -> None:
        self.interfaces = interfaces


class ConfigureNetwork(Request):
    """Give the VM's NICs the names, addresses and routes of the container's interfaces; with
    ``dns_relay``, relay 127.0.0.11:53 to the host (:class:`DnsQuery`)."""

    __slots__ = ("nics", "routes", "dns_relay")
    OP = "configure_network"
    RESULT = NetworkResult
    FIELDS = {"nics": ListOf(Nested(Nic), 64), "routes": ListOf(Nested(Route), 1024, optional=True),
              "dns_relay": Bool(optional=True, default=False)}

    def __init__(self, nics: list[Nic], routes: list[Route] | None = None, dns_relay: bool = False) -> None:
        self.nics = nics
        self.routes = routes or []
        self.dns_relay = dns_relay

    @classmethod
    def from_json(cls, value: Any) -> Self:
        request = super().from_json(value)
        names = {nic.name for nic in request.nics}
        if len(names) != len(request.nics):
            raise ProtocolError("two interfaces have the same name")
        for route in request.routes:
            if route.device not in names:
                raise ProtocolError(f"route through unknown device {route.device}")
        return request


class DnsReply(Request):
    """The answer to a :class:`DnsQuery`, asked in the container's namespace by the host."""

    __slots__ = ("query", "data")
    OP = "dns_reply"
    FIELDS = {"query": Int(1, 1 << 32), "data": Bytes(MAX_DNS)}

    def __init__(self, query: int, data: bytes) -> None:
        self.query = query
        self.data = data


# Containers and their processes.

class StrMap(Field):
    """The container's net.* sysctls: dotted names, string values."""

    __slots__ = ()

    def check(self, name: str, value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or len(value) > 256:
            raise ProtocolError(f"field {name!r} is not an object of at most 256 sysctls")
        for key, v in value.items():
            parts = key.split(".")
            if parts[0] != "net" or not all(p and p.replace("_", "").replace("-", "").isalnum() for p in parts):
                raise ProtocolError(f"invalid sysctl {key!r}")
            if not isinstance(v, str) or len(v) > 256:
                raise ProtocolError(f"invalid value for sysctl {key}")
        return value


# How long the guest says a step took, in microseconds (for the step timeline; never trusted beyond it).
MAX_STEP_US = 600_000_000


class ProcessResult(Record):
    """A process the agent started: its number (names its streams and events) and guest pid;
    ``agent_us``: how long the agent took over the request, ``crun_us`` of it in crun."""

    __slots__ = ("process", "pid", "agent_us", "crun_us")
    FIELDS = {"process": Int(1, MAX_PROCESSES), "pid": Int(1, 1 << 22),
              "agent_us": Int(0, MAX_STEP_US, optional=True, default=0),
              "crun_us": Int(0, MAX_STEP_US, optional=True, default=0)}

    def __init__(self, process: int, pid: int, agent_us: int = 0, crun_us: int = 0) -> None:
        self.process = process
        self.pid = pid
        self.agent_us = agent_us
        self.crun_us = crun_us


class CrunResult(Record):
    """How long a request's crun command took in the guest, in microseconds."""

    __slots__ = ("crun_us",)
    FIELDS = {"crun_us": Int(0, MAX_STEP_US, optional=True, default=0)}

    def __init__(self, crun_us: int = 0) -> None:
        self.crun_us = crun_us


class CreateContainer(Request):
    """``crun create`` with ``config`` (the guest's config.json); the init waits for start."""

    __slots__ = ("id", "config", "tty", "net_sysctls")
    OP = "create_container"
    RESULT = ProcessResult
    FIELDS = {"id": Ident(), "config": Obj(), "tty": Bool(optional=True, default=False),
              "net_sysctls": StrMap(optional=True, default={})}

    def __init__(self, id: str, config: dict[str, Any], tty: bool = False,
                 net_sysctls: dict[str, str] | None = None) -> None:
        self.id = id
        self.config = config
        self.tty = tty
        self.net_sysctls = net_sysctls or {}


class _ById(Request):
    """A request that names only a container."""

    __slots__ = ("id",)
    FIELDS = {"id": Ident()}

    def __init__(self, id: str) -> None:
        self.id = id


class StartContainer(_ById):
    __slots__ = ()
    OP = "start_container"
    RESULT = CrunResult


class PauseContainer(_ById):
    __slots__ = ()
    OP = "pause_container"


class ResumeContainer(_ById):
    __slots__ = ()
    OP = "resume_container"


class DeleteContainer(_ById):
    """Kill what is left of the container and remove it; no error if crun has it no more."""

    __slots__ = ()
    OP = "delete_container"


class ExecProcess(Request):
    """``crun exec`` of ``process_spec`` (an OCI process object) in container ``id``."""

    __slots__ = ("id", "process_spec")
    OP = "exec_process"
    RESULT = ProcessResult
    FIELDS = {"id": Ident(), "process_spec": Obj()}

    def __init__(self, id: str, process_spec: dict[str, Any]) -> None:
        self.id = id
        self.process_spec = process_spec


class SignalProcess(Request):
    """Signal a process; with ``all`` and a container's init, every process of its cgroup."""

    __slots__ = ("process", "signal", "all")
    OP = "signal_process"
    FIELDS = {"process": Int(1, MAX_PROCESSES), "signal": Int(1, 64), "all": Bool(optional=True, default=False)}

    def __init__(self, process: int, signal: int, all: bool = False) -> None:
        self.process = process
        self.signal = signal
        self.all = all


class Resize(Request):
    """The window size of a process's terminal (ignored for a process without one)."""

    __slots__ = ("process", "rows", "cols")
    OP = "resize"
    FIELDS = {"process": Int(1, MAX_PROCESSES), "rows": Int(0, 0xFFFF), "cols": Int(0, 0xFFFF)}

    def __init__(self, process: int, rows: int, cols: int) -> None:
        self.process = process
        self.rows = rows
        self.cols = cols


class UpdateContainer(Request):
    """``crun update`` with ``resources`` (an OCI linux.resources object)."""

    __slots__ = ("id", "resources")
    OP = "update_container"
    FIELDS = {"id": Ident(), "resources": Obj()}

    def __init__(self, id: str, resources: dict[str, Any]) -> None:
        self.id = id
        self.resources = resources


class PsEntry(Record):
    __slots__ = ("pid", "ppid", "uid", "state", "utime", "stime", "start", "cmd")
    FIELDS = {"pid": Int(1, 1 << 22), "ppid": Int(0, 1 << 22), "uid": Int(0, (1 << 32) - 1), "state": Str(4),
              "utime": Int(0, 1 << 62), "stime": Int(0, 1 << 62), "start": Int(0, 1 << 62), "cmd": Str(4096)}

    def __init__(self, pid: int, ppid: int, uid: int, state: str, utime: int, stime: int, start: int,
                 cmd: str) -> None:
        self.pid = pid
        self.ppid = ppid
        self.uid = uid
        self.state = state  # one letter, as in /proc/PID/stat
        self.utime = utime  # clock ticks
        self.stime = stime
        self.start = start  # clock ticks after boot
        self.cmd = cmd


class PsResult(Record):
    """A container's processes; a list on the wire."""

    __slots__ = ("processes",)
    FIELDS = {"processes": ListOf(Nested(PsEntry), 1 << 16)}

    def __init__(self, processes: list[PsEntry]) -> None:
        self.processes = processes

    @classmethod
    def from_json(cls, value: Any) -> Self:
        return super().from_json({"processes": value})

    def to_json(self) -> Any:
        return super().to_json()["processes"]


class Ps(_ById):
    __slots__ = ()
    OP = "ps"
    RESULT = PsResult


class Counters(Field):
    """memory.stat as read: counter name -> value."""

    __slots__ = ()

    def check(self, name: str, value: Any) -> dict[str, int]:
        if not isinstance(value, dict) or len(value) > 256:
            raise ProtocolError(f"field {name!r} is not an object of at most 256 counters")
        for key, v in value.items():
            if len(key) > 64 or not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ProtocolError(f"field {name!r} has a bad counter {key[:64]!r}")
        return value


_COUNT = Int(0, 1 << 63)


class InterfaceStats(Record):
    """One guest network interface's counters (/sys/class/net/NAME/statistics), as runc names them."""

    NAMES = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "tx_bytes", "tx_packets", "tx_errors",
             "tx_dropped")
    __slots__ = ("name",) + NAMES
    FIELDS = {"name": Str(64), **{n: Int(0, 1 << 63, optional=True, default=0) for n in NAMES}}

    def __init__(self, name: str, **counters: int) -> None:
        self.name = name
        for n in self.NAMES:
            setattr(self, n, counters.get(n, 0))


_OPT = Int(0, 1 << 63, optional=True, default=0)


class StatsResult(Record):
    """A container's cgroup statistics in the guest, nested on the wire as runc's ``events --stats``
    prints them (times in nanoseconds, sizes in bytes; a limit of 0: none): memory usage, peak,
    limit and the times it was hit; CPU time and throttling; pids; the VM's network interfaces
    (which are the container's network namespace's)."""

    __slots__ = ("cpu_total", "cpu_user", "cpu_kernel", "memory_usage", "memory_limit", "memory_cache",
                 "memory_raw", "pids_current", "memory_max", "memory_failcnt", "pids_limit", "cpu_periods",
                 "cpu_throttled_periods", "cpu_throttled_time", "network")
    FIELDS = {"cpu_total": _COUNT, "cpu_user": _COUNT, "cpu_kernel": _COUNT, "memory_usage": _COUNT,
              "memory_limit": _COUNT, "memory_cache": _COUNT, "memory_raw": Counters(), "pids_current": _COUNT,
              "memory_max": _OPT, "memory_failcnt": _OPT, "pids_limit": _OPT, "cpu_periods": _OPT,
              "cpu_throttled_periods": _OPT, "cpu_throttled_time": _OPT,
              "network": ListOf(Nested(InterfaceStats), 256, optional=True)}

    def __init__(self, cpu_total: int, cpu_user: int, cpu_kernel: int, memory_usage: int, memory_limit: int,
                 memory_cache: int, memory_raw: dict[str, int], pids_current: int, memory_max: int = 0,
                 memory_failcnt: int = 0, pids_limit: int = 0, cpu_periods: int = 0, cpu_throttled_periods: int = 0,
                 cpu_throttled_time: int = 0, network: list[InterfaceStats] | None = None) -> None:
        self.cpu_total = cpu_total
        self.cpu_user = cpu_user
        self.cpu_kernel = cpu_kernel
        self.memory_usage = memory_usage
        self.memory_limit = memory_limit  # 0: no limit
        self.memory_cache = memory_cache
        self.memory_raw = memory_raw  # memory.stat
        self.pids_current = pids_current
        self.memory_max = memory_max  # memory.peak
        self.memory_failcnt = memory_failcnt  # memory.events "max": times the limit was hit
        self.pids_limit = pids_limit  # 0: no limit
        self.cpu_periods = cpu_periods
        self.cpu_throttled_periods = cpu_throttled_periods
        self.cpu_throttled_time = cpu_throttled_time
        self.network = network or []

    @classmethod
    def from_json(cls, value: Any) -> Self:
        def part(obj: Any, *path: str) -> Any:
            for key in path:
                obj = obj.get(key) if isinstance(obj, dict) else None
            return obj
        return super().from_json({
            "cpu_total": part(value, "cpu", "usage", "total"), "cpu_user": part(value, "cpu", "usage", "user"),
            "cpu_kernel": part(value, "cpu", "usage", "kernel"),
            "cpu_periods": part(value, "cpu", "throttling", "periods"),
            "cpu_throttled_periods": part(value, "cpu", "throttling", "throttled_periods"),
            "cpu_throttled_time": part(value, "cpu", "throttling", "throttled_time"),
            "memory_usage": part(value, "memory", "usage", "usage"),
            "memory_limit": part(value, "memory", "usage", "limit"),
            "memory_max": part(value, "memory", "usage", "max"),
            "memory_failcnt": part(value, "memory", "usage", "failcnt"),
            "memory_cache": part(value, "memory", "cache"), "memory_raw": part(value, "memory", "raw"),
            "pids_current": part(value, "pids", "current"), "pids_limit": part(value, "pids", "limit"),
            "network": part(value, "network_interfaces")})

    def to_json(self) -> Any:
        return {
            "cpu": {"usage": {"total": self.cpu_total, "user": self.cpu_user, "kernel": self.cpu_kernel},
                    "throttling": {"periods": self.cpu_periods, "throttled_periods": self.cpu_throttled_periods,
                                   "throttled_time": self.cpu_throttled_time}},
            "memory": {"usage": {"usage": self.memory_usage, "max": self.memory_max, "failcnt": self.memory_failcnt,
                                 "limit": self.memory_limit},
                       "cache": self.memory_cache, "raw": self.memory_raw},
            "pids": {"current": self.pids_current, "limit": self.pids_limit},
            "network_interfaces": [i.to_json() for i in self.network],
        }


class Stats(_ById):
    __slots__ = ()
    OP = "stats"
    RESULT = StatsResult


class Shutdown(Request):
    """Stop the VM: answered by the monitor itself, never sent to the agent."""

    __slots__ = ()
    OP = "shutdown"


REQUESTS: dict[str, type[Request]] = {cls.OP: cls for cls in (
    Hello, CloneResumed, Ping, MountShare, SyncShares, ConfigureNetwork, DnsReply, CreateContainer, StartContainer,
    ExecProcess, SignalProcess, Resize, PauseContainer, ResumeContainer, DeleteContainer, UpdateContainer, Ps, Stats,
    Shutdown)}


def read_request(msg: dict[str, Any]) -> tuple[str, Any]:
    """The op name and the (unchecked) args of a request payload; the args go to ``from_json``."""
    op = protocol.field(msg, "op", str, max_len=64)
    return op, protocol.field(msg, "args", dict, optional=True, default={}, max_len=1 << 20)


# Events.

class Exit(Event):
    """A process has exited, after its last output; ``status`` is 128+N for death by signal N."""

    __slots__ = ("process", "container", "status")
    EVENT = "exit"
    FIELDS = {"process": Int(1, MAX_PROCESSES), "container": Ident(), "status": Int(0, 255)}

    def __init__(self, process: int, container: str, status: int) -> None:
        self.process = process
        self.container = container
        self.status = status


class DnsQuery(Event):
    """A DNS query a container sent to 127.0.0.11:53, for the host to ask Docker's DNS server."""

    __slots__ = ("query", "data")
    EVENT = "dns_query"
    FIELDS = {"query": Int(1, 1 << 32), "data": Bytes(MAX_DNS)}

    def __init__(self, query: int, data: bytes) -> None:
        self.query = query
        self.data = data


EVENTS: dict[str, type[Event]] = {cls.EVENT: cls for cls in (Exit, DnsQuery)}


def read_event(msg: dict[str, Any]) -> Event:
    """The event a payload carries, checked; ProtocolError for an unknown or malformed one."""
    name = msg.get("event")
    cls = EVENTS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown event {str(name)[:64]!r}")
    return cls.from_json(msg)
