"""Host processes: who is alive, and one way to stop a process that never signals a stranger.

A process is named by its pid *and* its start time (clock ticks since boot, /proc/PID/stat field
22), because pids are reused: whatever outlives the command that started it (the VM's monitor, a
container's shim) is recorded in the container's state that way. :func:`stop` opens a pidfd,
then checks the start time, so every signal it sends reaches that very process or none.
"""

from __future__ import annotations

import os
import select

SIGTERM, SIGKILL = 15, 9  # the same on every Linux architecture

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


def _parse_stat(data: bytes) -> tuple[str, int] | None:
    """(state, starttime) from the text of /proc/PID/stat. The comm field (2) may hold spaces
    and parentheses, so the fields are counted from its last ')'."""
    _, paren, rest = data.rpartition(b")")
    fields = rest.split()
    if not paren or len(fields) < 20:
        return None
    try:
        return fields[0].decode("ascii"), int(fields[19])  # fields 3 and 22
    except (UnicodeDecodeError, ValueError):
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return _parse_stat(f.read())
    except OSError:  # gone (ENOENT, or ESRCH if it exited between open and read)
        return None


def proc_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, or None if there is no such
    process. A zombie still has its start time."""
    info = _proc_stat(pid)
    return None if info is None else info[1]


def alive(pid: int, start: int = 0) -> bool:
    """Process ``pid`` exists, is no zombie and, if ``start`` is known (non-zero), started then."""
    info = _proc_stat(pid)
    return info is not None and info[0] not in ("Z", "X", "x") and (not start or info[1] == start)


def open_process(pid: int, start: int) -> int | None:
    """A pidfd of the process ``pid`` that started at ``start``; None if it is gone (or the pid is
    another process's now). ``start`` must be known: without it a pid names nobody for sure."""
    if pid <= 0 or start <= 0:
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # The pidfd pins one process; if the pid was reused before it was opened, the start differs.
    if proc_start_time(pid) != start:
        os.close(fd)
        return None
    return fd


def _exited(pidfd: int, timeout: float) -> bool:
    """Whether the process has exited (a pidfd turns readable then), waiting up to ``timeout`` s."""
    return bool(select.select([pidfd], [], [], max(0.0, timeout))[0])


def _send(pidfd: int, sig: int) -> bool:
    """Send ``sig``; False if the process is gone already."""
    import signal  # not at the top: `pellucid state` never signals (and signal builds enums)
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


def stop(pid: int, start: int, *, ask: Callable[[], object] | None = None, term: bool = True,
         timeout: float = 3.0) -> bool:
    """Stop a process, escalating: ``ask()`` (a polite request, if given), SIGTERM (unless ``term``
    is false: a shim forwards SIGTERM to the workload), SIGKILL; each step waits up to ``timeout``
    seconds for the exit (a request that raises is not waited for). Returns whether the process is gone (a child must still be reaped by
    its parent). A process that is not (or no longer) ``pid``/``start`` is left alone."""
    fd = open_process(pid, start)
    if fd is None:
        return True
    try:
        if ask is not None:
            try:
                ask()
            except Exception:  # not listening: on to the signals at once
                pass
            else:
                if _exited(fd, timeout):
                    return True
        if term:
            if not _send(fd, SIGTERM) or _exited(fd, timeout):
                return True
        if not _send(fd, SIGKILL):
            return True
        return _exited(fd, timeout)
    finally:
        os.close(fd)


def find(argv: list[str]) -> list[tuple[int, int]]:
    """(pid, start) of every live process whose command line, after its program, begins with
    ``argv``: how a process is found that was started by a command killed before it recorded it."""
    want = b"\0".join(os.fsencode(a) for a in argv) + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read(65536)
        except OSError:
            continue
        _, sep, rest = cmdline.partition(b"\0")
        if sep and rest.startswith(want):
            start = proc_start_time(int(name))
            if start is not None and alive(int(name), start):
                found.append((int(name), start))
    return found
