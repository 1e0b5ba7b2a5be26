"""OCI hooks run on the host as runc runs them: state on stdin, exact env, timeouts kill the group."""

import json
import os
import sys
import time

import pytest

from pellucid.errors import HookError
from pellucid.oci.hooks import hooks_of, run_hooks

STATE = {"ociVersion": "1.0.2-dev", "id": "c1", "status": "created", "pid": 4242,
         "bundle": "/b", "annotations": {"k": "v"}}
SH = "/bin/sh"


def sh(script: str, **hook) -> dict:
    return {"path": SH, "args": ["sh", "-c", script], **hook}


def test_state_arrives_on_stdin(tmp_path):
    out = tmp_path / "state.json"
    run_hooks("prestart", [sh(f"cat > {out}")], STATE)
    assert json.loads(out.read_text()) == STATE


def test_hooks_run_in_order(tmp_path):
    out = tmp_path / "order"
    run_hooks("poststop", [sh(f"echo one >> {out}"), sh(f"echo two >> {out}")], STATE)
    assert out.read_text() == "one\ntwo\n"


def test_large_state_unread_by_the_hook():
    """A state bigger than a pipe's buffer must not block a hook that never reads it."""
    run_hooks("prestart", [sh("exit 0")], {**STATE, "annotations": {"big": "x" * (1 << 20)}})


def test_args_default_to_the_path(tmp_path):
    script = tmp_path / "hook"
    script.write_text(f'#!/bin/sh\necho "$0 $#" > {tmp_path}/argv\n')
    script.chmod(0o755)
    run_hooks("createRuntime", [{"path": str(script)}], STATE)
    assert (tmp_path / "argv").read_text() == f"{script} 0\n"


def test_argv0_comes_from_args(tmp_path):
    run_hooks("prestart", [{"path": SH, "args": ["my-hook", "-c", f'echo "$0" > {tmp_path}/argv0']}], STATE)
    assert (tmp_path / "argv0").read_text() == "my-hook\n"


def test_environment_is_inherited_without_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PELLUCID_LEAK", "1")
    run_hooks("prestart", [{"path": sys.executable, "args": [
        "python", "-c", f"import os, json; open({str(tmp_path / 'env')!r}, 'w').write(json.dumps(dict(os.environ)))"]}],
        STATE)
    env = json.loads((tmp_path / "env").read_text())
    assert env.get("PELLUCID_LEAK") == "1"  # runc's Go exec with a nil Env inherits


def test_environment_is_exactly_env(tmp_path):
    hook = {"path": sys.executable, "env": ["A=1", "B=x=y", "EMPTY="], "args": [
        "python", "-c", f"import os, json; open({str(tmp_path / 'env')!r}, 'w').write(json.dumps(dict(os.environ)))"]}
    run_hooks("prestart", [hook], STATE)
    env = json.loads((tmp_path / "env").read_text())
    env.pop("LC_CTYPE", None)  # Python may coerce the C locale
    assert env == {"A": "1", "B": "x=y", "EMPTY": ""}


def test_failing_hook_reports_status_and_stderr(tmp_path):
    later = tmp_path / "later"
    hooks = [sh("exit 0"), sh("echo out; echo boom >&2; exit 3"), sh(f"touch {later}")]
    with pytest.raises(HookError) as caught:
        run_hooks("createContainer", hooks, STATE)
    assert str(caught.value) == f"error running createContainer hook #1: {SH}: exit status 3, stderr: boom"
    assert not later.exists()


def test_stderr_tail_is_bounded():
    with pytest.raises(HookError) as caught:
        run_hooks("prestart", [sh("head -c 100000 /dev/zero | tr '\\0' a >&2; echo END >&2; exit 1")], STATE)
    message = str(caught.value)
    assert message.endswith("aaaaEND") and len(message) < 4096 + 200


def test_hook_killed_by_signal():
    with pytest.raises(HookError, match=r"hook #0: /bin/sh: signal: killed$"):
        run_hooks("poststart", [sh("kill -KILL $$")], STATE)


def test_missing_hook_binary(tmp_path):
    with pytest.raises(HookError, match=f"^error running prestart hook #0: {tmp_path}/nope: "
                                        "no such file or directory$"):
        run_hooks("prestart", [{"path": str(tmp_path / "nope")}], STATE)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_timeout_kills_the_hook_and_its_children(tmp_path):
    pidfile = tmp_path / "child"
    hook = sh(f"sleep 30 & echo $! > {pidfile}; echo waiting >&2; wait", timeout=1)
    start = time.monotonic()
    with pytest.raises(HookError) as caught:
        run_hooks("prestart", [hook], STATE)
    assert time.monotonic() - start < 5
    assert str(caught.value) == (f"error running prestart hook #0: {SH}: "
                                 "hook ran past specified timeout of 1.0s, stderr: waiting")
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def test_child_outliving_a_hook_does_not_block(tmp_path):
    """A hook that leaves a daemon holding its stderr returns as soon as the hook exits."""
    pidfile = tmp_path / "daemon"
    start = time.monotonic()
    run_hooks("prestart", [sh(f"sleep 30 >&2 & echo $! > {pidfile}")], STATE)
    assert time.monotonic() - start < 5
    os.kill(int(pidfile.read_text()), 9)


def test_hooks_of_reexported():
    assert hooks_of({"hooks": {"poststop": [{"path": "/x", "timeout": 2}]}}, "poststop") == [
        {"path": "/x", "timeout": 2}]
