"""`pellucid stats` on a real VM (a clone of a template unless PELLUCID_TEST_TEMPLATES=0): every
host process of the VM is charged its PSS (QEMU, the monitor after it exec'd into its lean
serving form, the init shim and an exec's shim), QEMU's PSS is broken down, the guest reports the
container's memory, and the template's unmapped pages are counted apart."""

from __future__ import annotations

import json

import pytest

from .conftest import TEMPLATES
from .oci_client import become_subreaper, spawn, wait_exit

pytestmark = pytest.mark.vm
MiB = 1 << 20


def test_stats_of_a_running_container(runtime, make_bundle, tmp_path):
    become_subreaper()
    bundle = make_bundle(["sleep", "1000"])
    pid_file = tmp_path / "c.pid"
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), "c1")
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    runtime("start", "c1")
    exec_pid = tmp_path / "exec.pid"
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sleep", "1000"], "cwd": "/", "env": ["PATH=/bin"],
                                   "user": {"uid": 0, "gid": 0}}))
    assert spawn(runtime, "exec", "--process", str(process), "--detach", "--pid-file", str(exec_pid),
                 "c1").returncode == 0

    r = json.loads(runtime("stats", "--json", "c1").stdout)
    state = json.loads((runtime.root / "c1" / "state.json").read_text())
    roles = {(p["role"], p["pid"], p["container"]) for p in r["processes"]}
    # Step 1: each host process of the VM, once, with its PSS; the total is their sum.
    assert roles == {("qemu", state["vm"]["qemu_pid"], ""), ("monitor", state["monitor_pid"], ""),
                     ("shim", int(pid_file.read_text()), "c1"), ("shim", int(exec_pid.read_text()), "exec")}
    assert all(0 < p["pss"] <= p["rss"] for p in r["processes"])
    assert r["total_pss"] == sum(p["pss"] for p in r["processes"])
    # Step 2: the monitor serves in its lean form, under the pid the state recorded.
    cmdline = open(f"/proc/{state['monitor_pid']}/cmdline", "rb").read().split(b"\0")
    assert b"--serve" in cmdline
    # Step 3: QEMU's PSS by kind adds up to its PSS; a clone shares the template's pages.
    q = r["qemu"]
    qemu_pss = next(p["pss"] for p in r["processes"] if p["role"] == "qemu")
    assert q["guest_ram"] + q["template"] + q["root_image"] + q["kernel"] + q["code_cache"] + q["qemu"] == qemu_pss
    assert q["root_image"] > 0 and q["guest_ram"] > 0
    if TEMPLATES:
        assert r["vm"]["template"] and q["template"] > 0
        t = r["template"]
        assert t["mappers"] >= 1 and t["resident"] >= t["mapped"] > 0
        assert t["unmapped"] == t["resident"] - t["mapped"]
    else:
        assert not r["vm"]["template"] and r["template"] is None
    # Step 4: the guest's view is the container's cgroup in the VM.
    assert r["guest"]["memory"]["usage"]["usage"] > 0
    text = runtime("stats", "c1").stdout
    assert "host processes of the VM" in text and "guest's view of the container" in text

    missing = runtime("stats", "nosuch", check=False)
    assert missing.returncode == 1 and "container does not exist" in missing.stderr
    runtime("kill", "c1", "KILL")
    assert wait_exit(int(pid_file.read_text())) == 137
    runtime("delete", "c1")
