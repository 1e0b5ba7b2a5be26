"""A config as Docker 27+ and containerd 2.x write it, ociVersion 1.3.0 with fields of runtime-spec
1.1 to 1.3, runs in a VM whose crun (Debian 12's 1.8) takes 1.0.x only: the host normalises it."""

from __future__ import annotations

import json

import pytest

from .oci_client import Pipes, become_subreaper, spawn, wait_exit

@pytest.mark.vm
def test_a_runtime_spec_1_3_config_runs(runtime, make_bundle, tmp_path):
    become_subreaper()
    bundle = make_bundle(["sh", "-c", "echo host=$(hostname) domain=$(cat /proc/sys/kernel/domainname);"
                                      " grep -q ' /scratch tmpfs ' /proc/mounts && echo scratch=tmpfs"])
    config = json.loads((bundle / "config.json").read_text())
    config["ociVersion"] = "1.3.0"
    config["hostname"] = "ctr"
    config["domainname"] = "example.org"  # 1.1.0, carried out by crun 1.7+
    config["linux"]["personality"] = {"domain": "LINUX"}
    config["mounts"].append({"destination": "scratch", "type": "tmpfs", "source": "tmpfs"})  # relative: 1.2.0
    config["process"]["ioPriority"] = {"class": "IOPRIO_CLASS_BE", "priority": 4}  # 1.1.0, dropped
    config["process"]["scheduler"] = {"policy": "SCHED_OTHER", "nice": 5}  # 1.1.0, dropped
    config["process"]["execCPUAffinity"] = {"initial": "0"}  # 1.2.1, dropped
    config["linux"]["memoryPolicy"] = {"mode": "MPOL_DEFAULT"}  # 1.3.0, dropped
    (bundle / "config.json").write_text(json.dumps(config))

    pipes = Pipes()
    pid_file = tmp_path / "pid"
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), "v13", pipes=pipes)
    pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    runtime("start", "v13")
    stdout, stderr = pipes.read_all()
    assert wait_exit(int(pid_file.read_text())) == 0
    assert stdout.decode().split() == ["host=ctr", "domain=example.org", "scratch=tmpfs"]
    assert stderr == b""  # the warnings went to the log, not into the container's output
    warnings = [e["msg"] for e in map(json.loads, runtime.log.read_text().splitlines()) if e["level"] == "warning"]
    assert sorted(w.split()[1] for w in warnings) == ["linux.memoryPolicy", "process.execCPUAffinity",
                                                      "process.ioPriority", "process.scheduler"]
    runtime("delete", "v13")
    pipes.close()


def test_a_field_the_vm_cannot_honour_is_refused_before_any_boot(runtime, make_bundle):
    bundle = make_bundle(["true"], ociVersion="1.3.0")
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["netDevices"] = {"eth1": {}}
    (bundle / "config.json").write_text(json.dumps(config))
    out = runtime("create", "--bundle", str(bundle), "netdev", check=False)
    assert out.returncode == 1 and "linux.netDevices cannot be honoured" in out.stderr
