"""OCI semantics a VM must still honour (issue 8): the VM's host cgroup with the container's limits
plus the overhead, the same limits enforced inside the guest, stats that mean something, user
namespaces and mount propagation inside the guest."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pellucid.config import OverheadConfig
from .oci_client import Pipes, become_subreaper, create, spawn, wait_exit

pytestmark = pytest.mark.vm

MiB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")
BASE_MIB = 256  # hypervisor.memory_mib of the tests' configuration (the default)
OVERHEAD = (BASE_MIB + OverheadConfig().memory_mib) * MiB


@pytest.fixture(autouse=True, scope="module")
def subreaper():
    become_subreaper()


def v1() -> bool:
    return not (CGROUP / "cgroup.controllers").exists()


def cgroup_dir(controller: str, path: str) -> Path:
    return CGROUP / controller / path.lstrip("/") if v1() else CGROUP / path.lstrip("/")


@pytest.fixture
def cgroup_parent(runtime):
    """An absolute cgroup parent of the test's own, removed after it and its containers."""
    parent = f"/pellucid-e2e-{uuid.uuid4().hex[:8]}"
    yield parent
    runtime.cleanup()
    for d in sorted(CGROUP.glob(f"*{parent}"), reverse=True) if v1() else [CGROUP / parent.lstrip("/")]:
        if d.is_dir():
            d.rmdir()



def procs(d: Path) -> set[int]:
    return {int(p) for p in (d / "cgroup.procs").read_text().split()}


def ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def qemu_of(tmp_path: Path) -> int:
    from .conftest import qemu_pids
    pids = qemu_pids(tmp_path)
    assert len(pids) == 1, pids
    return pids.pop()


def stats(runtime, id: str) -> dict:
    return json.loads(runtime("events", "--stats", id).stdout)["data"]


def exec_detached(runtime, id: str, script: str, tmp_path: Path) -> int:
    process = tmp_path / f"p-{uuid.uuid4().hex[:6]}.json"
    process.write_text(json.dumps({"args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin:/sbin"],
                                   "user": {"uid": 0, "gid": 0}}))
    pid_file = tmp_path / f"{process.stem}.pid"
    out = spawn(runtime, "exec", "--process", str(process), "--detach", "--pid-file", str(pid_file), id)
    assert out.returncode == 0, runtime.log.read_text()
    return int(pid_file.read_text())


def test_limits_hold_on_the_host_and_in_the_guest(runtime, make_bundle, tmp_path, cgroup_parent):
    """The VM's host processes sit in the container's cgroupsPath with its limits plus the overhead;
    in the guest, crun sets the same limits: 64 MiB OOM-kills, the 21st process is refused; update
    changes both; delete removes the cgroup."""
    path = f"{cgroup_parent}/limits"
    script = ("dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo big=$?; "
              "dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null; echo small=$?; "
              # a subshell, which a failed fork ends; it counts with builtins only
              "(i=0; while [ $i -lt 25 ]; do sleep 600 & i=$((i+1)); echo spawned=$i; done) 2>/dev/null; "
              "kill -9 -1; wait; echo done; read x; echo bye")
    bundle = make_bundle(["sh", "-c", script])
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["cgroupsPath"] = path
    # CPU 1 is one the host has and the VM (1 vCPU, numbered 0) does not: it confines the VM on the host.
    config["linux"]["resources"] = {"memory": {"limit": 64 * MiB}, "pids": {"limit": 20},
                                    "cpu": {"quota": 50000, "period": 100000, "cpus": "1"}}
    (bundle / "config.json").write_text(json.dumps(config))
    pipes = Pipes()
    pid = create(runtime, bundle, "limits", tmp_path, pipes)

    # QEMU, its monitor and the shim, in every hierarchy.
    qemu = qemu_of(tmp_path)
    for controller in ("memory", "cpu", "cpuset", "pids") if v1() else ("",):
        members = procs(cgroup_dir(controller, path))
        assert {pid, qemu, ppid(qemu)} <= members, (controller, members)
    if v1():
        assert int((cgroup_dir("memory", path) / "memory.limit_in_bytes").read_text()) == 64 * MiB + OVERHEAD
        assert (cgroup_dir("cpu", path) / "cpu.cfs_quota_us").read_text().strip() == "75000"
        assert (cgroup_dir("cpuset", path) / "cpuset.cpus").read_text().strip() == "1"
        assert (cgroup_dir("pids", path) / "pids.max").read_text().strip() == str(OverheadConfig().pids)

    runtime("start", "limits")
    from .oci_client import read_until
    out = read_until(pipes.stdout_r, b"done\n", timeout=120).decode()
    assert "big=137" in out, out  # OOM-killed at the 64 MiB limit inside the VM
    assert "small=0" in out, out
    spawned = [int(line.split("=")[1]) for line in out.split() if line.startswith("spawned=")]
    assert max(spawned) == 18, out  # the shell, the subshell and 18 sleeps: the 21st process was refused
    guest = stats(runtime, "limits")
    assert guest["memory"]["usage"]["limit"] == 64 * MiB and guest["memory"]["usage"]["failcnt"] >= 1
    assert guest["pids"]["limit"] == 20

    # An exec's shim joins the cgroup too.
    exec_pid = exec_detached(runtime, "limits", "sleep 600", tmp_path)
    assert exec_pid in procs(cgroup_dir("memory" if v1() else "", path))

    runtime("update", "--memory", str(128 * MiB), "limits")
    assert stats(runtime, "limits")["memory"]["usage"]["limit"] == 128 * MiB
    limit_file = "memory.limit_in_bytes" if v1() else "memory.max"
    assert int((cgroup_dir("memory", path) / limit_file).read_text()) == 128 * MiB + OVERHEAD

    pipes.write_stdin(b"x\n")
    rest, _ = pipes.read_all()
    assert b"bye" in rest
    assert wait_exit(pid) == 0
    runtime("delete", "limits")
    runtime.wait_reaped()  # the cgroup goes once the VM has exited, after delete returned
    assert not any(cgroup_dir(c, path).exists() for c in ("memory", "cpu", "cpuset", "pids", "unified"))
    pipes.close()


def test_stats_follow_an_allocation_on_the_host_and_in_the_guest(runtime, make_bundle, tmp_path, cgroup_parent):
    """The host cgroup (what docker stats reads through the shim's pid) grows by the 100 MiB the
    container touches; events --stats reports them within 10%."""
    path = f"{cgroup_parent}/stats"
    bundle = make_bundle(["sleep", "1000"])
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["cgroupsPath"] = path
    config["linux"]["resources"] = {"memory": {"limit": 256 * MiB}}
    (bundle / "config.json").write_text(json.dumps(config))
    pid = create(runtime, bundle, "stats", tmp_path)
    runtime("start", "stats")
    usage_file = cgroup_dir("memory", path) / ("memory.usage_in_bytes" if v1() else "memory.current")
    time.sleep(2)
    host_before, guest_before = int(usage_file.read_text()), stats(runtime, "stats")["memory"]["usage"]["usage"]
    # dd reads 100 MiB into its buffer and holds it, blocked on a pipe nobody reads.
    exec_detached(runtime, "stats", "dd if=/dev/zero bs=100M count=1 | sleep 600", tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        guest = stats(runtime, "stats")
        if guest["memory"]["usage"]["usage"] - guest_before > 90 * MiB:
            break
        time.sleep(1)
    grown = guest["memory"]["usage"]["usage"] - guest_before
    assert abs(grown - 100 * MiB) <= 10 * MiB, grown / MiB
    assert guest["memory"]["usage"]["limit"] == 256 * MiB and guest["pids"]["current"] >= 3
    assert guest["network_interfaces"] == [] or all("rx_bytes" in i for i in guest["network_interfaces"])
    host_grown = int(usage_file.read_text()) - host_before
    assert host_grown > 80 * MiB, host_grown / MiB  # the guest's pages are the VM's host memory
    runtime("kill", "stats", "KILL")
    wait_exit(pid)
    runtime("delete", "stats")


def test_user_namespace_with_root_owned_by_100000_on_the_host(runtime, make_bundle, tmp_path):
    """uidMappings/gidMappings are crun's in the guest; 9p passes host owners through, so a rootfs
    owned by 100000 on the host is root's inside, and what the container writes is 100000's."""
    bundle = make_bundle(["sh", "-c", "id -u; cat /proc/self/uid_map; touch /made-inside; echo ok"])
    subprocess.run(["chown", "-R", "-h", "100000:100000", str(bundle / "rootfs")], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    (bundle / "config.json").write_text(json.dumps(config))
    pipes = Pipes()
    pid = create(runtime, bundle, "userns", tmp_path, pipes)
    runtime("start", "userns")
    out, err = pipes.read_all()
    assert wait_exit(pid) == 0, (out, err)
    lines = out.decode().split("\n")
    assert lines[0] == "0" and lines[1].split() == ["0", "100000", "65536"] and "ok" in lines, (out, err)
    made = os.stat(bundle / "rootfs" / "made-inside")
    assert (made.st_uid, made.st_gid) == (100000, 100000)
    runtime("delete", "userns")
    pipes.close()


def test_a_mount_under_an_rshared_bind_shows_at_a_second_bind_of_the_same_source(runtime, make_bundle,
                                                                                    tmp_path):
    """As runc does with Docker's rootfsPropagation "shared" and "rshared" binds: the two binds are
    peers, inside the VM (propagation to and from the host cannot cross it)."""
    source = tmp_path / "vol"
    (source / "sub").mkdir(parents=True)
    script = ("mount -t tmpfs none /a/sub && echo hello > /a/sub/f && cat /b/sub/f; "
              "grep -E ' /(a|b)[ /]' /proc/self/mountinfo")
    bundle = make_bundle(["sh", "-c", script])
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"] += [{"destination": d, "type": "bind", "source": str(source), "options": ["rbind", "rshared"]}
                         for d in ("/a", "/b")]
    config["linux"]["rootfsPropagation"] = "shared"
    for caps in config["process"]["capabilities"].values():
        caps.append("CAP_SYS_ADMIN")
    (bundle / "config.json").write_text(json.dumps(config))
    pipes = Pipes()
    pid = create(runtime, bundle, "prop", tmp_path, pipes)
    runtime("start", "prop")
    out, err = pipes.read_all()
    assert wait_exit(pid) == 0, (out, err)
    lines = out.decode().splitlines()
    assert lines[0] == "hello", (out, err)
    assert "shared:" in lines[1], lines[1]
    assert not (source / "sub" / "f").exists(), "the container's tmpfs reached the host"
    runtime("delete", "prop")
    pipes.close()
