"""A failed command's error reaches containerd through the --log file whatever state the stdio it
inherited is in: containerd hands the container's pipes to the runtime as the runtime's own stdio,
so they may be closed, a pipe whose reader is gone, or a FIFO nobody reads. The exit status is
runc's 1 (never Python's 120 for a failed flush at exit), and the `delete --force` containerd sends
after a failed create succeeds."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager

import pytest

from .oci_client import become_subreaper

STDIO_KINDS = ("closed", "pipe-without-reader", "fifo-without-reader")


@contextmanager
def broken_stdio(kind: str, tmp_path):
    """subprocess.run keyword arguments giving the child stdio of ``kind``."""
    if kind == "closed":
        yield {"stdin": None, "stdout": None, "stderr": None,
               "preexec_fn": lambda: [os.close(fd) for fd in (0, 1, 2)]}
        return
    if kind == "pipe-without-reader":
        r, w = os.pipe()
    else:
        fifo = tmp_path / f"fifo{len(list(tmp_path.glob('fifo*')))}"
        os.mkfifo(fifo)
        r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        w = os.open(fifo, os.O_WRONLY)
    os.close(r)  # the reader is gone: every write gets EPIPE
    try:
        yield {"stdin": subprocess.DEVNULL, "stdout": w, "stderr": w}
    finally:
        os.close(w)


def run_broken(runtime, kind: str, tmp_path, *args: str) -> int:
    with broken_stdio(kind, tmp_path) as stdio:
        return subprocess.run(runtime.argv(*args), timeout=300, **stdio).returncode


def log_errors(runtime) -> list[str]:
    if not runtime.log.exists():
        return []
    return [e["msg"] for e in map(json.loads, runtime.log.read_text().splitlines()) if e["level"] == "error"]


@pytest.mark.parametrize("kind", STDIO_KINDS)
def test_a_config_error_reaches_the_log_and_delete_force_succeeds(runtime, make_bundle, tmp_path, kind):
    bundle = make_bundle(["true"])
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = []
    (bundle / "config.json").write_text(json.dumps(config))

    # create fails on the config: exit 1, and the reason is the log's last error line.
    assert run_broken(runtime, kind, tmp_path, "create", "--bundle", str(bundle), "--pid-file",
                      str(tmp_path / "pid"), "bad") == 1
    assert log_errors(runtime)[-1].endswith("process.args must not be empty")
    assert not (tmp_path / "pid").exists()

    # containerd's clean-up after a failed create: delete --force of a container that never was.
    assert run_broken(runtime, kind, tmp_path, "delete", "--force", "bad") == 0
    # a plain delete fails as runc's does, and says so in the log
    assert run_broken(runtime, kind, tmp_path, "delete", "bad") == 1
    assert log_errors(runtime)[-1] == "pellucid: container does not exist"


@pytest.mark.parametrize("kind", STDIO_KINDS)
def test_commands_that_print_exit_cleanly_when_stdout_is_broken(runtime, kind, tmp_path):
    assert run_broken(runtime, kind, tmp_path, "features") == 0
    assert run_broken(runtime, kind, tmp_path, "list") == 0
    assert run_broken(runtime, kind, tmp_path, "state", "ghost") == 1
    assert log_errors(runtime) == ["pellucid: container does not exist"]


def test_closed_stdio_is_never_reused_for_the_log(runtime, tmp_path):
    """With fds 0, 1, 2 closed at start, the log must not be opened onto one of them: the printed
    output would land in the log (and a child would inherit the log as its stdio)."""
    with broken_stdio("closed", tmp_path) as stdio:
        assert subprocess.run(runtime.argv("features"), **stdio).returncode == 0
    assert runtime.log.read_text() == ""


@pytest.mark.vm
@pytest.mark.parametrize("kind", ["pipe-without-reader"])
def test_a_failure_after_the_vm_booted_reaches_the_log(runtime, make_bundle, tmp_path, kind):
    become_subreaper()
    bundle = make_bundle(["/no/such/binary"])
    assert run_broken(runtime, kind, tmp_path, "create", "--bundle", str(bundle), "--pid-file",
                      str(tmp_path / "pid"), "nobin") == 1
    assert "/no/such/binary" in log_errors(runtime)[-1]
    assert run_broken(runtime, kind, tmp_path, "delete", "--force", "nobin") == 0
    assert runtime("state", "nobin", check=False).returncode == 1
