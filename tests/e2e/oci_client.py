"""Driving the runtime as containerd's runc shim does: the test process is a child subreaper, so
the process behind --pid-file (pellucid's shim) becomes its child when `create` returns, and its
exit status is read with waitpid, exactly as containerd-shim-runc-v2 and conmon read runc's."""

from __future__ import annotations

import array
import ctypes
import os
import select
import socket
import subprocess
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def wait_exit(pid: int, timeout: float = 120) -> int:
    """The exit code of our (adopted) child ``pid``, as a shell reports it (128+N for signal N)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code
        time.sleep(0.02)
    raise TimeoutError(f"process {pid} did not exit within {timeout}s")


class Pipes:
    """stdin/stdout/stderr pipes handed to the runtime, as containerd's shim hands its FIFOs."""

    def __init__(self) -> None:
        self.stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, self.stdout_w = os.pipe()
        self.stderr_r, self.stderr_w = os.pipe()

    def child_stdio(self) -> dict:
        return {"stdin": self.stdin_r, "stdout": self.stdout_w, "stderr": self.stderr_w}

    def close_child_ends(self) -> None:
        for fd in (self.stdin_r, self.stdout_w, self.stderr_w):
            os.close(fd)

    def write_stdin(self, data: bytes, close: bool = True) -> None:
        os.write(self.stdin_w, data)
        if close:
            os.close(self.stdin_w)
            self.stdin_w = -1

    def read_all(self, timeout: float = 60) -> tuple[bytes, bytes]:
        out, err = bytearray(), bytearray()
        open_fds = {self.stdout_r: out, self.stderr_r: err}
        deadline = time.monotonic() + timeout
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], 0.5)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    open_fds[fd] += chunk
                else:
                    del open_fds[fd]
        return bytes(out), bytes(err)

    def close(self) -> None:
        for fd in (self.stdin_w, self.stdout_r, self.stderr_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


class ConsoleSocket:
    """A --console-socket: receives the pty master the runtime sends, as containerd's shim does."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(300)

    def receive(self) -> tuple[int, str]:
        conn, _ = self.sock.accept()
        with conn:
            fds = array.array("i")
            msg, anc, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:fds.itemsize])
        return fds[0], msg.decode()

    def close(self) -> None:
        self.sock.close()


def read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def spawn(runtime, *args: str, pipes: Pipes | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a runtime command with the container's stdio as its own (how create and exec get it)."""
    stdio = pipes.child_stdio() if pipes else {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                                                 "stderr": subprocess.DEVNULL}
    proc = subprocess.run(runtime.argv(*args), timeout=300, **stdio, **kw)
    return proc


def create(runtime, bundle: Path, id: str, tmp_path: Path, pipes: Pipes | None = None) -> int:
    """``create`` as a client runs it (with the container's stdio when given); returns the init's pid."""
    pid_file = tmp_path / f"{id}.pid"
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), id, pipes=pipes)
    if pipes:
        pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    return int(pid_file.read_text())
