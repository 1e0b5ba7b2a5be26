"""pellucid.procs.stop: request, SIGTERM, SIGKILL in turn, and never a signal to a stranger."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pellucid import procs

# A child that reports each signal it gets on stdout, and exits on SIGUSR1 (the "request").
TRAPPER = """
import signal, sys, time
def note(signum, frame):
    print(signal.Signals(signum).name, flush=True)
    if signum == signal.SIGUSR1:
        sys.exit(0)
for s in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, note)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture
def trapper():
    procs_ = []

    def spawn() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", TRAPPER], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "ready\n"
        procs_.append(p)
        return p

    yield spawn
    for p in procs_:
        p.kill()
        p.wait()


def signals_seen(p: subprocess.Popen) -> list[str]:
    p.wait(5)
    return p.stdout.read().split()


def test_escalates_to_sigkill_when_sigterm_is_ignored(trapper):
    p = trapper()
    started = time.monotonic()
    assert procs.stop(p.pid, procs.proc_start_time(p.pid), timeout=0.3)
    assert time.monotonic() - started < 3
    assert p.wait(5) == -9 and signals_seen(p) == ["SIGTERM"]


def test_a_request_that_works_needs_no_signal(trapper):
    p = trapper()
    assert procs.stop(p.pid, procs.proc_start_time(p.pid), ask=lambda: p.send_signal(10), timeout=5)
    assert p.wait(5) == 0 and signals_seen(p) == ["SIGUSR1"]


def test_without_term_sigterm_is_never_sent(trapper):
    """A shim forwards SIGTERM to the workload: stopping it must skip SIGTERM."""
    p = trapper()
    assert procs.stop(p.pid, procs.proc_start_time(p.pid), ask=lambda: None, term=False, timeout=0.2)
    assert p.wait(5) == -9 and signals_seen(p) == []


def test_a_failing_request_goes_on_to_the_signals(trapper):
    p = trapper()

    def ask():
        raise OSError("no monitor socket")

    started = time.monotonic()
    assert procs.stop(p.pid, procs.proc_start_time(p.pid), ask=ask, timeout=1)
    assert p.wait(5) == -9 and signals_seen(p) == ["SIGTERM"]
    assert time.monotonic() - started < 2.5, "waited for a request that was never made"


def test_another_start_time_is_another_process(trapper):
    """The pid was reused (or the start time is unknown): nothing is signalled."""
    p = trapper()
    start = procs.proc_start_time(p.pid)
    assert procs.stop(p.pid, start + 1, timeout=0.2)
    assert procs.stop(p.pid, 0, timeout=0.2)
    assert p.poll() is None and procs.alive(p.pid, start)


def test_a_gone_process_is_stopped_already():
    p = subprocess.Popen(["true"])
    start = procs.proc_start_time(p.pid)
    p.wait()
    assert procs.stop(p.pid, start or 1, timeout=0.1)


def test_open_process_pins_the_process(trapper):
    p = trapper()
    fd = procs.open_process(p.pid, procs.proc_start_time(p.pid))
    assert fd is not None
    try:
        p.kill()
        p.wait()
        assert procs._exited(fd, 1)
        assert not procs._send(fd, 9)  # gone: the pidfd can never reach whoever gets the pid next
    finally:
        os.close(fd)
