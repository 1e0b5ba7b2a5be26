"""pellucid.log: the --log file gets the error whatever the inherited stdio is; stdio guarded at
start and at exit. Descriptor-level cases run in a child interpreter, whose fds they may break."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pellucid import log


@pytest.fixture
def logfile(tmp_path):
    path = tmp_path / "log"
    yield path
    if log._file is not None:
        log._file.close()
    log._file, log._format, log._debug = None, "text", False


def test_json_lines_as_runc_writes_them():
    entry = json.loads(log.format_line("error", 'bad "x"', "json", now=0))
    assert entry == {"level": "error", "msg": 'bad "x"', "time": "1970-01-01T00:00:00Z"}


def test_text_lines_quote_the_message():
    assert log.format_line("warning", 'a "b"', "text", now=0) == \
        'time="1970-01-01T00:00:00Z" level=warning msg="a \\"b\\""\n'


def test_error_goes_to_the_log_and_stderr(logfile, capfd):
    log.setup(str(logfile), "json")
    log.error("pellucid: boom")
    assert json.loads(logfile.read_text())["msg"] == "pellucid: boom"
    assert capfd.readouterr().err == "pellucid: boom\n"


def test_warnings_stay_off_stderr_when_there_is_a_log(logfile, capfd):
    """stderr is the container's under containerd: a warning there would be the container's output."""
    log.setup(str(logfile), "json")
    log.warning("dropped x")
    assert capfd.readouterr().err == ""
    assert json.loads(logfile.read_text())["level"] == "warning"


def test_warnings_go_to_stderr_without_a_log(logfile, capfd):
    log.setup("", "text")
    log.warning("dropped x")
    assert capfd.readouterr().err == "pellucid: warning: dropped x\n"



def test_guard_stdio_fills_closed_descriptors_so_files_never_land_on_them(tmp_path):
    out = tmp_path / "out"
    code = f"""
import os, sys
log.guard_stdio()
fd = os.open({str(tmp_path / 'file')!r}, os.O_WRONLY | os.O_CREAT)
targets = [os.readlink(f"/proc/self/fd/{{n}}") for n in (0, 1, 2)]
print("printed")  # to /dev/null, not to the file
open({str(out)!r}, "w").write(repr((fd, targets)))
"""
    done = subprocess.run([sys.executable, "-I", "-c", "from pellucid import log\n" + code], timeout=60,
                          preexec_fn=lambda: [os.close(n) for n in (0, 1, 2)])
    assert done.returncode == 0
    fd, targets = eval(out.read_text())
    assert fd > 2 and targets == ["/dev/null"] * 3
    assert (tmp_path / "file").read_text() == ""


@pytest.mark.parametrize("broken", ["pipe", "closed"])
def test_error_and_exit_survive_broken_stdio(tmp_path, broken):
    """The error reaches the log, and the exit status stays the command's (Python's 120 for a
    failed flush at exit never shows). -I: buffered stdout, as the pellucid executable has it."""
    code = f"""
import sys
log.guard_stdio()
log.setup({str(tmp_path / 'log')!r}, "json")
sys.stdout.write("left buffered in stdout")
log.error("pellucid: it failed")
log.finish_stdout()
sys.exit(1)
"""
    if broken == "pipe":
        r, w = os.pipe()
        os.close(r)
        done = subprocess.run([sys.executable, "-I", "-c", "from pellucid import log\n" + code], stdout=w, stderr=w,
                              timeout=60)
        os.close(w)
    else:
        done = subprocess.run([sys.executable, "-I", "-c", "from pellucid import log\n" + code], timeout=60,
                              preexec_fn=lambda: [os.close(n) for n in (0, 1, 2)])
    assert done.returncode == 1
    assert json.loads((tmp_path / "log").read_text())["msg"] == "pellucid: it failed"


def test_the_cli_turns_an_unexpected_exception_into_an_error_line(monkeypatch, logfile, capfd):
    from pellucid import cli
    from pellucid.commands import container

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(container, "features", broken)
    assert cli.main(["--log", str(logfile), "--log-format", "json", "features"]) == 1
    assert json.loads(logfile.read_text().splitlines()[-1])["msg"] == "pellucid: internal error: RuntimeError: a bug"
