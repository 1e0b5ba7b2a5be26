"""The wire protocol between the host and the guest agent: the whole contract, one module.

Both sides import this file (it is copied into the guest image), so it uses the standard
library only and stays cheap to import.

A frame is a 12-byte header followed by a payload:

    magic "PL" | version u8 | kind u8 | id u32 | length u32     (network byte order)

- REQUEST  (JSON)  ``{"op": str, "args": {...}}``; ``id`` is chosen by the sender.
- RESPONSE (JSON)  ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"kind": str, "message": str}}``,
  with the ``id`` of the request it answers.
- EVENT    (JSON)  ``{"event": str, ...}``, unsolicited, ``id`` 0.
- STREAM   (raw)   bytes of one stdio stream of one process; ``id`` names the stream
  (see :func:`stream_id`); an empty payload closes it.
- CREDIT   (u32)   the receiver of stream ``id`` grants its sender that many more bytes
  (see "Flow control" below).

Everything read from the other side is bounded (:data:`MAX_PAYLOAD`) and validated: the
guest is not trusted.
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and dataclasses cost a third of a second of the guest's boot under TCG
    from typing import Any, Iterator

VERSION = 2
MAGIC = b"PL"
HEADER = struct.Struct("!2sBBII")
MAX_PAYLOAD = 1 << 20
MAX_STREAM_CHUNK = 64 * 1024

REQUEST = 1
RESPONSE = 2
EVENT = 3
STREAM = 4
CREDIT = 5
KINDS = (REQUEST, RESPONSE, EVENT, STREAM, CREDIT)
JSON_KINDS = (REQUEST, RESPONSE, EVENT)

# Stream ids: the agent numbers processes; the low two bits name the stdio stream.
STDIN, STDOUT, STDERR = 0, 1, 2

AGENT_PORT_NAME = "org.pellucid.agent.0"


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message."""


class Frame:
    __slots__ = ("kind", "id", "payload")

    def __init__(self, kind: int, id: int, payload: bytes) -> None:
        self.kind = kind
        self.id = id
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and (self.kind, self.id, self.payload) == (other.kind, other.id, other.payload)

    def __repr__(self) -> str:
        return f"Frame(kind={self.kind}, id={self.id}, payload={self.payload[:32]!r})"

    def json(self) -> dict[str, Any]:
        """The payload of a JSON frame, checked to be an object."""
        if self.kind not in JSON_KINDS:
            raise ProtocolError(f"frame kind {self.kind} carries no JSON")
        try:
            value = json.loads(self.payload)
        except (UnicodeDecodeError, ValueError) as err:
            raise ProtocolError(f"invalid JSON payload: {err}") from None
        if not isinstance(value, dict):
            raise ProtocolError("JSON payload is not an object")
        return value


def encode(kind: int, id: int, payload: bytes) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION, kind, id & 0xFFFFFFFF, len(payload)) + payload


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def request(id: int, op: str, args: dict[str, Any] | None = None) -> bytes:
    return encode(REQUEST, id, _dump({"op": op, "args": args or {}}))


def response_ok(id: int, result: Any = None) -> bytes:
    return encode(RESPONSE, id, _dump({"ok": True, "result": result}))


def response_error(id: int, kind: str, message: str) -> bytes:
    return encode(RESPONSE, id, _dump({"ok": False, "error": {"kind": kind, "message": message[:4096]}}))


def event(name: str, **fields: Any) -> bytes:
    return encode(EVENT, 0, _dump({"event": name, **fields}))


def stream(id: int, data: bytes) -> bytes:
    return encode(STREAM, id, data)


def stream_id(process: int, fd: int) -> int:
    """The stream id of stdio stream ``fd`` (0, 1 or 2) of process number ``process``."""
    if fd not in (STDIN, STDOUT, STDERR):
        raise ValueError(f"bad stdio fd {fd}")
    return (process << 2) | fd


def split_stream_id(id: int) -> tuple[int, int]:
    fd = id & 3
    if fd == 3:
        raise ProtocolError(f"stream id {id} names no stdio stream")
    return id >> 2, fd


# Flow control. The one channel carries every stream, so it is never paused: each stream has a
# window instead. Its sender may have up to STREAM_WINDOW bytes sent and not yet consumed; the
# final receiver (the agent writing a process's stdin, the shim writing to its caller's output)
# grants bytes back with a CREDIT frame as it consumes them. Every stream starts with a full
# window. The monitor in the middle checks both directions, so its buffers stay bounded.

STREAM_WINDOW = 512 * 1024
_CREDIT = struct.Struct("!I")


def credit(id: int, granted: int) -> bytes:
    """A CREDIT frame granting ``granted`` more bytes on stream ``id``."""
    return encode(CREDIT, id, _CREDIT.pack(granted))


def parse_credit(frame: Frame) -> int:
    """The bytes a CREDIT frame grants, checked to fit a window."""
    if frame.kind != CREDIT or len(frame.payload) != _CREDIT.size:
        raise ProtocolError("malformed credit frame")
    (granted,) = _CREDIT.unpack(frame.payload)
    if not 0 < granted <= STREAM_WINDOW:
        raise ProtocolError(f"credit of {granted} bytes does not fit a window")
    return granted


class Window:
    """What the sender of one stream may still send before the receiver grants more."""

    __slots__ = ("available",)

    def __init__(self) -> None:
        self.available = STREAM_WINDOW

    def take(self, n: int) -> None:
        if n > self.available:
            raise ProtocolError(f"{n} bytes sent on a stream with {self.available} bytes of credit")
        self.available -= n

    def grant(self, n: int) -> None:
        if self.available + n > STREAM_WINDOW:
            raise ProtocolError("credit granted beyond the stream's window")
        self.available += n


class FrameReader:
    """Incremental decoder: feed it bytes as they arrive, take whole frames out."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max = max_payload

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            magic, version, kind, id, length = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise ProtocolError(f"bad frame magic {bytes(magic)!r}")
            if version != VERSION:
                raise ProtocolError(f"unsupported protocol version {version} (want {VERSION})")
            if kind not in KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            if length > self._max:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self._max}")
            end = HEADER.size + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[HEADER.size:end])
            del self._buf[:end]
            yield Frame(kind, id, payload)

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf)


# Field checks for messages from the other side.

def field(msg: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False,
          default: Any = None, max_len: int = 65536) -> Any:
    """``msg[name]`` checked to be of ``kind`` (bool is never taken for int) and bounded in length."""
    if name not in msg or msg[name] is None:
        if optional:
            return default
        raise ProtocolError(f"missing field {name!r}")
    value = msg[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(f"field {name!r} has the wrong type")
    if not isinstance(value, kinds):
        raise ProtocolError(f"field {name!r} has the wrong type")
    if isinstance(value, (str, list, dict)) and len(value) > max_len:
        raise ProtocolError(f"field {name!r} is too long")
    return value
