"""Unix socket helpers: paths longer than sun_path allows, and passing a file descriptor."""

from __future__ import annotations

import array
import os
import socket

MAX_PATH = 100  # sun_path is 108 bytes with its NUL; leave a margin


def connect(path: str, timeout: float | None = None) -> socket.socket:
    """Connect to a unix socket, even one whose path is too long for sun_path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        _with_short_path(path, sock.connect)
    except BaseException:
        sock.close()
        raise
    return sock


def bind(sock: socket.socket, path: str) -> None:
    _with_short_path(path, sock.bind)


def _with_short_path(path: str, op) -> None:
    if len(path.encode()) <= MAX_PATH:
        op(path)
        return
    # Reach the socket through /proc/self/fd/N of its directory: the kernel resolves the rest.
    dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        op(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
    finally:
        os.close(dirfd)


def send_fd(path: str, fd: int, name: str) -> None:
    """Send ``fd`` over the unix socket at ``path`` as runc sends a console's master: SCM_RIGHTS,
    with the terminal's name as the message."""
    with connect(path, timeout=10) as sock:
        sock.sendmsg([name.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
