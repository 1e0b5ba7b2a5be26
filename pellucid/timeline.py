"""An opt-in step timeline of the start path, shared by the processes that make one container.

With ``PELLUCID_TIMELINE=FILE`` in its environment, each pellucid process (the CLI, the monitor,
the shim) appends one JSON line per step to FILE: ``{"id", "who", "pid", "step", "start", "ms"}``,
``start`` in wall-clock nanoseconds, so that the lines of separate processes make one timeline
(``bench/cli`` prints it and plots it). Every line is a single ``O_APPEND`` write. A process's
first line is its Python start-up: from ``PELLUCID_TIMELINE_T0`` (set by whoever spawned it, just
before the spawn) or else from the process's start time in /proc. Unset, every call here is a
no-op and nothing is opened: the module imports only what the CLI has loaded already.
"""

from __future__ import annotations

import json
import os
import time

ENV = "PELLUCID_TIMELINE"
T0_ENV = "PELLUCID_TIMELINE_T0"

_path = os.environ.get(ENV, "")
_who = ""
_id = ""


def enabled() -> bool:
    return bool(_path)


def now() -> int:
    return time.time_ns()


def begin(who: str, id: str = "") -> None:
    """Name this process's lines, and record its Python start-up up to now."""
    global _who, _id
    if not _path:
        return
    _who, _id = who, id or _id
    t0 = os.environ.pop(T0_ENV, "")
    start = int(t0) if t0.isdigit() else _process_start()
    if start:
        span("python start-up", start)


def set_id(id: str) -> None:
    global _id
    _id = id


def span(step: str, start: int, end: int | None = None) -> None:
    """Record ``step`` from ``start`` to ``end`` (now by default), both from :func:`now`."""
    if not _path:
        return
    end = now() if end is None else end
    line = json.dumps({"id": _id, "who": _who, "pid": os.getpid(), "step": step, "start": start,
                       "ms": round((end - start) / 1e6, 3)}) + "\n"
    try:
        fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # a timeline is a measurement: it never fails a command


class _Step:
    __slots__ = ("name", "start")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.start = now()

    def __exit__(self, *exc: object) -> None:
        span(self.name, self.start)


class _NoStep:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_STEP = _NoStep()


def step(name: str) -> _Step | _NoStep:
    """``with step("hooks"): ...`` records how long the block took."""
    return _Step(name) if _path else _NO_STEP


def child_env() -> dict[str, str] | None:
    """The environment for a pellucid process about to be spawned: its start-up is timed from now.
    None (inherit) when the timeline is off."""
    if not _path:
        return None
    return {**os.environ, T0_ENV: str(now())}


def _process_start() -> int:
    """This process's start, in wall-clock ns, from /proc (to the kernel's clock tick)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0
    since_boot = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return now() - (time.clock_gettime_ns(time.CLOCK_BOOTTIME) - since_boot)
