"""runc-style logging: messages to stderr and, with --log, to a file as text or JSON lines."""

from __future__ import annotations

import json
import sys
import time

_file = None
_format = "text"
_debug = False


def setup(path: str | None, fmt: str = "text", debug: bool = False) -> None:
    global _file, _format, _debug
    _format, _debug = fmt, debug
    if path:
        try:
            _file = open(path, "a", buffering=1)
        except OSError as err:
            print(f"pellucid: cannot open log file {path}: {err.strerror}", file=sys.stderr)


def _write(level: str, msg: str) -> None:
    if _file is None:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if _format == "json":
        _file.write(json.dumps({"level": level, "msg": msg, "time": now}) + "\n")
    else:
        _file.write(f'time="{now}" level={level} msg="{msg}"\n')


def error(msg: str) -> None:
    """An error the command fails with: on stderr and in the log."""
    print(msg, file=sys.stderr)
    _write("error", msg)


def warning(msg: str) -> None:
    print(f"pellucid: warning: {msg}", file=sys.stderr)
    _write("warning", msg)


def info(msg: str) -> None:
    _write("info", msg)


def debug(msg: str) -> None:
    if _debug:
        _write("debug", msg)
