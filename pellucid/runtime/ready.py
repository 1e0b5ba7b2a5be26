"""The monitor and the shim each tell the runtime they are ready (or why not) as one JSON line on
a pipe: the runtime's side of that."""

from __future__ import annotations

import os
import select
import time


def read_line(fd: int, timeout: float) -> bytes:
    """Bytes up to the first newline (or the writer's exit); TimeoutError if none in ``timeout`` s."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    return buf
