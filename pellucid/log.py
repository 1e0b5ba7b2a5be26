"""runc-style logging: to the --log file as text or JSON lines; errors to stderr as well.

containerd and Docker hand the container's stdio to the runtime as the runtime's own, and read a
failed command's error from the --log file, not from stderr. So the log is written first and
never depends on the inherited stdio, which may be closed, a pipe without a reader or a FIFO:
stderr is written with one write(2) whose failure is ignored, nothing of it is left buffered for
the interpreter's exit to trip on, and warnings reach stderr only when there is no log file (they
would land in the container's output). :func:`guard_stdio` and :func:`finish_stdout` keep the
standard descriptors sound at start and at exit.
"""

from __future__ import annotations

import json
import os
import sys
import time

_file = None
_format = "text"
_debug = False

STDIO = (0, 1, 2)


def guard_stdio() -> None:
    """Open /dev/null onto whichever of fds 0, 1, 2 is closed, so that no file pellucid opens
    later (its log, a pid file, a socket) lands on a standard descriptor by accident and is
    written to as stdout or stderr, or handed to a child as its stdio."""
    for fd in STDIO:
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    # Python left the streams of descriptors closed at its start as None: give them back.
    if sys.stdin is None:
        sys.stdin = open(0, "r", closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


def finish_stdout() -> None:
    """Flush stdout before exit; if its reader is gone (EPIPE) or it is unusable (EBADF), put
    /dev/null under it so that the interpreter's own flush at exit cannot change the exit status
    (Python turns a failed flush at exit into status 120)."""
    stream = sys.stdout
    if stream is None:
        return
    try:
        stream.flush()
    except (OSError, ValueError):
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, stream.fileno())
            os.close(null)
            stream.flush()  # the pending bytes go to /dev/null now
        except (OSError, ValueError):
            pass


def setup(path: str | None, fmt: str = "text", debug: bool = False) -> None:
    global _file, _format, _debug
    _format, _debug = fmt, debug
    if path:
        try:
            _file = open(path, "a", buffering=1)
        except OSError as err:
            _stderr(f"pellucid: cannot open log file {path}: {err.strerror}")


def format_line(level: str, msg: str, fmt: str, now: float | None = None) -> str:
    """One log line as runc's logrus writes it: JSON {"level","msg","time"} or logfmt text."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    if fmt == "json":
        return json.dumps({"level": level, "msg": msg, "time": stamp}) + "\n"
    return f"time={json.dumps(stamp)} level={level} msg={json.dumps(msg)}\n"


def _write(level: str, msg: str) -> None:
    if _file is None:
        return
    try:
        _file.write(format_line(level, msg, _format))
    except (OSError, ValueError):
        pass  # a full disk or a revoked file must not turn into a second error


def _stderr(line: str) -> None:
    data = (line + "\n").encode("utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass  # closed, a pipe without a reader, a full non-blocking pipe: the log has the message


def error(msg: str) -> None:
    """An error the command fails with: in the log first, then on stderr if it can be written."""
    _write("error", msg)
    _stderr(msg)


def warning(msg: str) -> None:
    _write("warning", msg)
    if _file is None:
        _stderr(f"pellucid: warning: {msg}")


def info(msg: str) -> None:
    _write("info", msg)


def debug(msg: str) -> None:
    if _debug:
        _write("debug", msg)
