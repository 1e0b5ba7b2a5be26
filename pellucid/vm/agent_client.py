"""The host's end of the agent channel: requests with ids, responses matched back, events and
stream data handed to callbacks. Everything read is bounded and checked (the guest is not trusted).
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

from .. import messages, protocol
from ..errors import AgentError, VMError


class AgentClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader()
        self._next_id = 1
        self._responses: dict[int, protocol.Frame] = {}
        self.on_event: Callable[[dict[str, Any]], None] = lambda event: None
        self.on_stream: Callable[[int, bytes], None] = lambda id, data: None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _pump(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        if not data:
            raise VMError("the agent channel closed (the VM stopped)")
        try:
            for frame in self.reader.feed(data):
                self.handle(frame)
        except protocol.ProtocolError as err:
            raise VMError(f"agent sent an invalid frame: {err}") from err

    def handle(self, frame: protocol.Frame) -> None:
        if frame.kind == protocol.RESPONSE:
            self._responses[frame.id] = frame
        elif frame.kind == protocol.EVENT:
            self.on_event(frame.json())
        elif frame.kind == protocol.STREAM:
            self.on_stream(frame.id, frame.payload)

    def call(self, request: messages.Request, timeout: float = 30.0) -> Any:
        """Send one request and wait for its response; events seen meanwhile go to the callbacks.
        Returns the request's result record (None for a request without one), checked."""
        id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        self.send(request.encode(id))
        deadline = time.monotonic() + timeout
        while id not in self._responses:
            try:
                self._pump(deadline)
            except TimeoutError:
                raise VMError(f"the agent did not answer {request.OP!r} within {timeout:g}s") from None
        value = parse_response(self._responses.pop(id))
        try:
            return request.read_result(value)
        except protocol.ProtocolError as err:
            name = request.RESULT.__name__ if request.RESULT is not None else "result"
            raise VMError(f"agent sent an invalid {name} to {request.OP!r}: {err}") from err


def parse_response(frame: protocol.Frame) -> Any:
    """The result of a response frame as JSON, or the :class:`AgentError` it carries."""
    try:
        msg = frame.json()
        ok = protocol.field(msg, "ok", bool)
        if ok:
            return msg.get("result")
        error = messages.Error.from_json(msg.get("error"))
    except protocol.ProtocolError as err:
        raise VMError(f"agent sent an invalid response: {err}") from err
    raise AgentError(error.kind, error.message)


def parse_result(frame: protocol.Frame, result: type[messages.Record] | None) -> Any:
    """The ``result`` record of a response frame (None when the request has no result), or the
    :class:`AgentError` it carries."""
    value = parse_response(frame)
    if result is None:
        return None
    try:
        return result.from_json(value)
    except protocol.ProtocolError as err:
        raise VMError(f"agent sent an invalid {result.__name__}: {err}") from err
