"""A small synchronous QMP client: enough to query and stop QEMU, with bounded reads."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from ..errors import VMError

MAX_LINE = 1 << 20


class QMP:
    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise VMError("QMP: no greeting from QEMU")
        self.execute("qmp_capabilities")

    def _read(self, deadline: float | None = None) -> dict[str, Any]:
        deadline = deadline or time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VMError("QMP: QEMU did not answer in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise VMError("QMP: QEMU closed the monitor")
            self._buf += chunk
            if len(self._buf) > MAX_LINE and b"\n" not in self._buf:
                raise VMError("QMP: oversized message")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except ValueError:
            raise VMError(f"QMP: invalid JSON: {line[:200]!r}") from None
        if not isinstance(msg, dict):
            raise VMError("QMP: message is not an object")
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        return self._execute(command, arguments, None)

    def execute_with_fd(self, command: str, fd: int, **arguments: Any) -> Any:
        """A command that takes a file descriptor with it (SCM_RIGHTS), such as ``getfd``."""
        return self._execute(command, arguments, fd)

    def _execute(self, command: str, arguments: dict[str, Any], fd: int | None) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        data = json.dumps(msg).encode() + b"\n"
        if fd is None:
            self.sock.sendall(data)
        else:
            self.sock.settimeout(self.timeout)
            sent = socket.send_fds(self.sock, [data], [fd])
            self.sock.sendall(data[sent:])
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if "event" in reply:
                self.events.append(reply)
                del self.events[:-100]
                continue
            if "error" in reply:
                err = reply["error"]
                desc = err.get("desc", err) if isinstance(err, dict) else err
                raise VMError(f"QMP {command}: {desc}")
            return reply.get("return")

    def close(self) -> None:
        self.sock.close()
