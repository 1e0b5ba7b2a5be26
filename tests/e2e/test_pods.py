"""Containers in another container's VM, with real VMs, driven as CRI-O and Docker drive runc:
a CRI-O pod (its annotations and pinned namespace paths) whose sandbox has a read-only root
holding nothing but one static binary, as Kubernetes' pause image; and a container that joins
another's network and IPC namespaces by /proc/<shim pid>/ns (docker --network container:X)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pellucid.oci.default_spec import default_spec

from .conftest import host_boot_id
from .oci_client import become_subreaper, create, wait_exit

pytestmark = pytest.mark.vm

SHOW = "echo boot=$(cat /proc/sys/kernel/random/boot_id) host=$(hostname) ipc=$(readlink /proc/self/ns/ipc)"


@pytest.fixture(autouse=True, scope="module")
def subreaper():
    become_subreaper()


def crio(kind: str, sandbox: str) -> dict[str, str]:
    return {"io.kubernetes.cri-o.ContainerType": kind, "io.kubernetes.cri-o.SandboxID": sandbox}


def bundle_with(path: Path, rootfs_from: Path | None, config: dict) -> Path:
    if rootfs_from is not None:
        shutil.copytree(rootfs_from, path / "rootfs", symlinks=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def config_of(args: list[str], annotations: dict[str, str] | None = None,
              namespaces: dict[str, str] | None = None, readonly: bool = False, hostname: str = "") -> dict:
    config = default_spec()
    config["process"].update(args=args, terminal=False)
    config["root"]["readonly"] = readonly
    if annotations:
        config["annotations"] = annotations
    config.pop("hostname", None)  # a container joining a pod's UTS namespace names none (as CRI's)
    if hostname:
        config["hostname"] = hostname
    for ns in config["linux"]["namespaces"]:
        if ns["type"] in (namespaces or {}):
            ns["path"] = namespaces[ns["type"]]
    return config



def show(runtime, id: str) -> dict[str, str]:
    out = runtime("exec", id, "/bin/busybox", "sh", "-c", SHOW).stdout
    return dict(f.split("=", 1) for f in out.split())


def test_crio_pod_with_a_pause_like_sandbox(runtime, busybox_template, tmp_path):
    """The sandbox's root is read-only and holds only /pause (here a static busybox): the runtime
    makes the mount points; the pod's container joins the sandbox's VM and its pinned IPC and UTS
    namespaces; removing the container leaves the sandbox; removing the sandbox stops the VM."""
    pinned = {"ipc": "/var/run/ipcns/e2e-pod", "uts": "/var/run/utsns/e2e-pod"}  # never opened: a VM cannot join them
    sandbox = tmp_path / "sandbox"
    (sandbox / "rootfs").mkdir(parents=True)
    shutil.copy2(busybox_template / "bin/busybox", sandbox / "rootfs/busybox")
    bundle_with(sandbox, None, config_of(["/busybox", "sleep", "600"], crio("sandbox", "pod"), pinned,
                                         readonly=True, hostname="e2e-pod"))
    create(runtime, sandbox, "pod", tmp_path)
    runtime("start", "pod")
    assert {"dev", "proc", "sys"} <= {p.name for p in (sandbox / "rootfs").iterdir()}
    assert runtime.state("pod")["status"] == "running"

    container = bundle_with(tmp_path / "c1", busybox_template,
                            config_of(["sleep", "600"], crio("container", "pod"), pinned))
    pid = create(runtime, container, "c1", tmp_path)
    runtime("start", "c1")
    mine = show(runtime, "c1")
    pause = runtime("exec", "pod", "/busybox", "sh", "-c", "/busybox cat /proc/sys/kernel/random/boot_id; "
                    "/busybox readlink /proc/self/ns/ipc; /busybox touch /new 2>/dev/null; true").stdout.split()
    assert mine["boot"] == pause[0] != host_boot_id()
    assert mine["host"] == "e2e-pod" and mine["ipc"] == pause[1]
    assert not (sandbox / "rootfs/new").exists()  # the root stayed read-only

    runtime("kill", "c1", "KILL")
    wait_exit(pid)
    runtime("delete", "c1")
    assert runtime.state("pod")["status"] == "running"
    runtime("delete", "--force", "pod")


def test_docker_network_container_shares_the_vm(runtime, make_bundle, tmp_path):
    """docker run --network container:a --ipc container:a: b runs in a's VM, in a's IPC namespace;
    deleting a first leaves b running in the VM, which stops with b."""
    a = make_bundle(["sleep", "600"])
    a_pid = create(runtime, a, "a", tmp_path)
    runtime("start", "a")
    joins = {"network": f"/proc/{a_pid}/ns/net", "ipc": f"/proc/{a_pid}/ns/ipc"}
    b_config = json.loads((a / "config.json").read_text())
    for ns in b_config["linux"]["namespaces"]:
        if ns["type"] in joins:
            ns["path"] = joins[ns["type"]]
    b = bundle_with(tmp_path / "b", tmp_path / "bundle1" / "rootfs", b_config)
    create(runtime, b, "b", tmp_path)
    runtime("start", "b")
    in_a, in_b = show(runtime, "a"), show(runtime, "b")
    assert in_a["boot"] == in_b["boot"] != host_boot_id()
    assert in_a["ipc"] == in_b["ipc"]

    stranger = json.loads((a / "config.json").read_text())
    for ns in stranger["linux"]["namespaces"]:
        if ns["type"] == "ipc":
            ns["path"] = "/proc/1/ns/ipc"
    c = bundle_with(tmp_path / "c", tmp_path / "bundle1" / "rootfs", stranger)
    refused = runtime("create", "--bundle", str(c), "c", check=False)
    assert refused.returncode != 0 and "belongs to no pellucid container" in refused.stderr

    runtime("delete", "--force", "a")
    assert runtime("state", "a", check=False).returncode != 0
    assert show(runtime, "b")["boot"] == in_a["boot"]  # the VM lives on for b
    runtime("delete", "--force", "b")
    wait_exit(a_pid)
