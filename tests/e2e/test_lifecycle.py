"""The OCI lifecycle in a VM, driven as containerd's runc shim drives runc: create with the
container's stdio as the runtime's own and a --pid-file, start, kill, delete; state, exec, ps,
pause/resume, events and update on the side. Each container really runs in its own VM."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import termios
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import TEMPLATES, host_boot_id
from .oci_client import ConsoleSocket, Pipes, become_subreaper, read_until, spawn, wait_exit

pytestmark = pytest.mark.vm

SHOW_VM = 'echo "kernel=$(uname -r) boot=$(cat /proc/sys/kernel/random/boot_id)"'


@pytest.fixture(autouse=True, scope="module")
def subreaper():
    become_subreaper()


def create(runtime, bundle, id, tmp_path, pipes=None, *extra):
    pid_file = tmp_path / f"{id}.pid"
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), *extra, id, pipes=pipes)
    if pipes:
        pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    return int(pid_file.read_text())


def test_a_container_runs_in_its_own_vm_through_its_whole_lifecycle(runtime, make_bundle, tmp_path):
    """create -> created, start -> running, exit -> stopped, delete, and delete --force of a gone one."""
    bundle = make_bundle(["sh", "-c", f"{SHOW_VM}; read line; echo got:$line; exit 7"])
    pipes = Pipes()
    pid = create(runtime, bundle, "life", tmp_path, pipes)
    state = runtime.state("life")
    assert state["status"] == "created" and state["pid"] == pid and state["bundle"] == str(bundle)
    assert state["rootfs"] == str(bundle / "rootfs")
    vm = runtime.vm_info("life")
    assert bool(vm["template"]) == TEMPLATES  # a clone of a template, or (templates off) a cold boot
    runtime("start", "life")
    assert runtime.state("life")["status"] == "running"
    pipes.write_stdin(b"ping\n")
    out, err = pipes.read_all()
    assert wait_exit(pid) == 7
    fields = dict(f.split("=", 1) for f in out.decode().split()[:2])
    assert fields["kernel"] != os.uname().release
    assert fields["boot"] == vm["boot_id"] != host_boot_id()
    assert b"got:ping" in out and err == b""
    assert runtime.state("life")["status"] == "stopped" and runtime.state("life")["pid"] == 0
    runtime("delete", "life")
    assert runtime("state", "life", check=False).returncode != 0
    runtime("delete", "--force", "life")  # containerd's last word on a gone container must succeed
    pipes.close()


def test_stdout_and_stderr_stay_apart_and_large_output_arrives_whole(runtime, make_bundle, tmp_path):
    bundle = make_bundle(["sh", "-c", "echo to-err >&2; seq 1 30000; exit 0"])
    pipes = Pipes()
    pid = create(runtime, bundle, "io", tmp_path, pipes)
    runtime("start", "io")
    out, err = pipes.read_all()
    assert wait_exit(pid) == 0
    assert out.decode().split() == [str(i) for i in range(1, 30001)]
    assert err == b"to-err\n"
    runtime("delete", "io")
    pipes.close()


def test_signals_reach_the_container_and_the_status_says_how_it_died(runtime, make_bundle, tmp_path):
    trap = make_bundle(["sh", "-c", "trap 'echo term; exit 42' TERM; echo ready; while :; do sleep 0.1; done"])
    pipes = Pipes()
    pid = create(runtime, trap, "sig", tmp_path, pipes)
    runtime("start", "sig")
    assert b"ready" in read_until(pipes.stdout_r, b"ready")
    runtime("kill", "sig", "TERM")
    assert wait_exit(pid) == 42
    assert runtime("kill", "sig", "9", check=False).returncode != 0  # killing a stopped container fails
    runtime("delete", "sig")
    pipes.close()

    sleeper = make_bundle(["sleep", "1000"])
    pid = create(runtime, sleeper, "sig9", tmp_path)
    runtime("start", "sig9")
    runtime("kill", "--all", "sig9", "SIGKILL")
    assert wait_exit(pid) == 137
    runtime("delete", "sig9")


def test_terminal_through_a_console_socket_with_resize(runtime, make_bundle, tmp_path):
    bundle = make_bundle(["sh"], terminal=True)
    console = ConsoleSocket(tmp_path / "console.sock")
    pid = create(runtime, bundle, "tty", tmp_path, None, "--console-socket", console.path)
    master, name = console.receive()
    assert name.startswith("/dev/pts/")
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    runtime("start", "tty")
    os.write(master, b"stty size; tty\n")
    out = read_until(master, b"/dev/pts/")
    assert b"33 111" in out, out
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 70, 0, 0))
    time.sleep(1)
    os.write(master, b"stty size; exit 5\n")
    assert b"20 70" in read_until(master, b"20 70")
    assert wait_exit(pid) == 5
    runtime("delete", "tty")
    os.close(master)
    console.close()


def test_exec_pause_resume_ps_and_stats(runtime, make_bundle, tmp_path):
    bundle = make_bundle(["sleep", "1000"])
    pid = create(runtime, bundle, "svc", tmp_path)
    runtime("start", "svc")

    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sh", "-c", "echo exec-ok; cat; exit 3"], "cwd": "/",
                                   "env": ["PATH=/bin:/sbin"], "user": {"uid": 0, "gid": 0}}))
    pipes = Pipes()
    exec_pid_file = tmp_path / "exec.pid"
    out = spawn(runtime, "exec", "--process", str(process), "--detach", "--pid-file", str(exec_pid_file), "svc",
                pipes=pipes)
    pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text()
    pipes.write_stdin(b"from-stdin\n")
    stdout, _ = pipes.read_all()
    assert stdout == b"exec-ok\nfrom-stdin\n"
    assert wait_exit(int(exec_pid_file.read_text())) == 3
    pipes.close()

    table = runtime("ps", "svc").stdout.splitlines()
    assert table[0].split() == ["UID", "PID", "PPID", "STAT", "CMD"] and "sleep 1000" in table[1]
    refused = runtime("ps", "--format", "json", "svc", check=False)  # guest pids are not host pids
    assert refused.returncode != 0 and "no host pids" in refused.stderr

    stats = json.loads(runtime("events", "--stats", "svc").stdout)
    assert stats["type"] == "stats" and stats["id"] == "svc"
    assert stats["data"]["memory"]["usage"]["usage"] > 0 and stats["data"]["pids"]["current"] >= 1

    runtime("pause", "svc")
    assert runtime.state("svc")["status"] == "paused"
    assert runtime("exec", "svc", "true", check=False).returncode != 0
    runtime("resume", "svc")
    assert runtime.state("svc")["status"] == "running"

    ok = runtime("update", "--resources", "-", "svc", input=json.dumps({"memory": {"limit": 64 << 20}}),
                 stdin=None)
    assert ok.returncode == 0
    too_big = runtime("update", "--memory", "64g", "svc", check=False)
    assert too_big.returncode != 0 and "VM has" in too_big.stderr

    runtime("kill", "svc", "KILL")
    assert wait_exit(pid) == 137
    runtime("delete", "svc")


def test_exec_with_a_terminal(runtime, make_bundle, tmp_path):
    pid = create(runtime, make_bundle(["sleep", "1000"]), "exectty", tmp_path)
    runtime("start", "exectty")
    console = ConsoleSocket(tmp_path / "exec-console.sock")
    process = tmp_path / "p.json"
    process.write_text(json.dumps({"args": ["sh", "-c", "tty; exit 4"], "cwd": "/", "terminal": True,
                                   "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}))
    exec_pid = tmp_path / "e.pid"
    out = spawn(runtime, "exec", "--process", str(process), "--console-socket", console.path, "--detach",
                "--pid-file", str(exec_pid), "exectty")
    assert out.returncode == 0, runtime.log.read_text()
    master, _ = console.receive()
    assert b"/dev/pts/" in read_until(master, b"/dev/pts/")
    assert wait_exit(int(exec_pid.read_text())) == 4
    runtime("delete", "--force", "exectty")
    wait_exit(pid)
    os.close(master)
    console.close()


def test_hooks_run_on_the_host_with_the_state(runtime, make_bundle, tmp_path):
    record = tmp_path / "hooks"
    record.mkdir()
    hook = lambda stage: {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {record}/{stage}"]}  # noqa: E731
    bundle = make_bundle(["true"], hooks={"prestart": [hook("prestart")], "createRuntime": [hook("createRuntime")],
                                          "poststart": [hook("poststart")], "poststop": [hook("poststop")]})
    pid = create(runtime, bundle, "hooked", tmp_path)
    for stage in ("prestart", "createRuntime"):
        state = json.loads((record / stage).read_text())
        assert state["id"] == "hooked" and state["status"] == "creating" and state["pid"] == pid
    # Docker's networking hook finds the container's network namespace through that pid.
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    runtime("start", "hooked")
    assert json.loads((record / "poststart").read_text())["status"] == "running"
    assert wait_exit(pid) == 0
    runtime("delete", "hooked")
    assert json.loads((record / "poststop").read_text())["status"] == "stopped"


def test_a_failing_hook_fails_create_and_leaves_nothing(runtime, make_bundle, tmp_path):
    bundle = make_bundle(["true"], hooks={"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]})
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "p"), "badhook")
    assert out.returncode != 0
    assert "createRuntime hook" in runtime.log.read_text()
    assert runtime("state", "badhook", check=False).returncode != 0


def test_twenty_containers_created_at_once(runtime, make_bundle, tmp_path):
    bundles = [make_bundle(["sleep", "1000"]) for _ in range(20)]

    def one(i):
        return spawn(runtime, "create", "--bundle", str(bundles[i]), "--pid-file", str(tmp_path / f"c{i}.pid"),
                     f"c{i}").returncode

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(one, range(20)))
    assert codes == [0] * 20, runtime.log.read_text()[-3000:]
    listed = json.loads(runtime("list", "--format", "json").stdout)
    assert sorted(s["id"] for s in listed) == sorted(f"c{i}" for i in range(20))
    assert {s["status"] for s in listed} == {"created"}
    assert len({s["pid"] for s in listed}) == 20
    vms = [runtime.vm_info(f"c{i}") for i in range(20)]
    assert len({vm["boot_id"] for vm in vms}) == 20  # clones of one template too: each its own
    assert len({vm["template"] for vm in vms}) == 1 and bool(vms[0]["template"]) == TEMPLATES
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda i: runtime("delete", "--force", f"c{i}", check=False).returncode, range(20)))
    assert codes == [0] * 20
    for i in range(20):
        wait_exit(int((tmp_path / f"c{i}.pid").read_text()))
    assert json.loads(runtime("list", "--format", "json").stdout) == []
