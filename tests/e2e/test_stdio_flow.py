"""Stdio flow control end to end, driven as containerd's runc shim drives runc: stdin arrives byte
for byte however slowly the process reads it, stdout arrives whole however slowly the caller reads
it, and a stalled reader holds up nothing else in the VM.

PELLUCID_TEST_STDIO_MIB sets the volume (default 16 MiB; 100 MiB takes minutes under TCG). Each
test prints the throughput it saw (run with -s)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from .oci_client import Pipes, become_subreaper, read_until, spawn, wait_exit

pytestmark = pytest.mark.vm

MIB = int(os.environ.get("PELLUCID_TEST_STDIO_MIB", "16"))
SIZE = MIB << 20
STALL = 5.0


@pytest.fixture(autouse=True, scope="module")
def subreaper():
    become_subreaper()


def create(runtime, bundle, id, tmp_path, pipes):
    pid_file = tmp_path / f"{id}.pid"
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), id, pipes=pipes)
    pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    return int(pid_file.read_text())


def with_data(bundle, size: int) -> bytes:
    """Random bytes put in the bundle's rootfs as /data (the container reads them over 9p)."""
    data = os.urandom(size)
    (bundle / "rootfs/data").write_bytes(data)
    return data


def report(what: str, size: int, seconds: float) -> None:
    print(f"\n{what}: {size / (1 << 20):.1f} MiB in {seconds:.1f} s = {size / (1 << 20) / seconds:.2f} MiB/s")


def test_stdin_arrives_byte_for_byte_through_a_process_that_reads_late(runtime, make_bundle, tmp_path):
    """The process sleeps before it reads: everything the caller wrote waits (in the caller's pipe,
    not in a buffer that overflows) and then arrives whole, EOF included."""
    payload = os.urandom(SIZE)
    bundle = make_bundle(["sh", "-c", "sleep 3; sha256sum; exit 6"])
    pipes = Pipes()
    pid = create(runtime, bundle, "stdin", tmp_path, pipes)
    runtime("start", "stdin")
    started = time.monotonic()

    def caller() -> None:
        pipes.write_stdin(payload)  # blocking, as containerd's copy into the FIFO

    writer = threading.Thread(target=caller)
    writer.start()
    out, err = pipes.read_all(timeout=1800)
    writer.join()
    report("stdin", SIZE, time.monotonic() - started)
    assert wait_exit(pid) == 6
    assert out.split()[0].decode() == hashlib.sha256(payload).hexdigest(), (out, err)
    runtime("delete", "stdin")
    pipes.close()


def test_stdout_arrives_whole_through_a_reader_that_stalls(runtime, make_bundle, tmp_path):
    """The caller reads nothing for a while: the process is held back (it stays running, it is not
    killed), then its output arrives in order and whole, followed by its exit status."""
    bundle = make_bundle(["sh", "-c", "cat /data; echo done >&2; exit 3"])
    expected = with_data(bundle, SIZE)
    pipes = Pipes()
    pid = create(runtime, bundle, "stall", tmp_path, pipes)
    runtime("start", "stall")
    time.sleep(STALL)
    assert runtime.state("stall")["status"] == "running"  # held back by the reader, not killed
    started = time.monotonic()
    out, err = pipes.read_all(timeout=1800)
    report("stdout (after a 5 s stall)", len(out), time.monotonic() - started)
    assert wait_exit(pid) == 3
    assert len(out) == len(expected) and hashlib.sha256(out).digest() == hashlib.sha256(expected).digest()
    assert err == b"done\n"
    runtime("delete", "stall")
    pipes.close()


def test_a_stalled_reader_holds_up_no_other_process_and_no_control_request(runtime, make_bundle, tmp_path):
    """The container's init writes far more than a window and nobody reads it. Meanwhile an exec in
    the same VM streams its output, and state, ps and kill answer promptly."""
    bundle = make_bundle(["sh", "-c", "echo started; cat /data /data; sleep 1000"])
    data = with_data(bundle, 4 << 20)
    stalled = Pipes()
    pid = create(runtime, bundle, "busy", tmp_path, stalled)
    runtime("start", "busy")
    assert b"started" in read_until(stalled.stdout_r, b"started")  # then the reader stalls
    time.sleep(3)

    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["cat", "/data"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"],
                                   "user": {"uid": 0, "gid": 0}}))
    flowing = Pipes()
    exec_pid_file = tmp_path / "exec.pid"
    started = time.monotonic()
    out = spawn(runtime, "exec", "--process", str(process), "--detach", "--pid-file", str(exec_pid_file), "busy",
                pipes=flowing)
    flowing.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text()
    out, _ = flowing.read_all(timeout=600)
    report("exec stdout beside a stalled reader", len(out), time.monotonic() - started)
    assert out == data
    assert wait_exit(int(exec_pid_file.read_text())) == 0
    flowing.close()

    for args in (("state", "busy"), ("ps", "busy")):
        started = time.monotonic()
        runtime(*args)
        took = time.monotonic() - started
        print(f"{' '.join(args)} beside a stalled reader: {took:.2f} s")
        assert took < 10
    assert runtime.state("busy")["status"] == "running"
    started = time.monotonic()
    runtime("kill", "busy", "KILL")
    stalled.close()  # the reader goes away: what is left of the output is discarded
    assert wait_exit(pid, timeout=60) == 137
    print(f"kill to exit beside a stalled reader: {time.monotonic() - started:.2f} s")
    runtime("delete", "busy")
