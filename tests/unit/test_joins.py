"""Containers that run in another container's VM: pod containers (containerd's and CRI-O's
annotations), containers joining namespaces by /proc/<shim pid>/ns/<type> (docker --network
container:X), and the VM's lifetime while any container in it lives. On a fake host: every
fake shim is this test process (MY_PID), so the first container by id is the one named."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pellucid.config import parse as parse_config
from pellucid.errors import BundleError, ContainerError, NotFound
from pellucid.oci.default_spec import default_spec
from pellucid.runtime import lifecycle
from pellucid.runtime.create import create
from pellucid.store import Store
from tests.fakes import MY_PID, FakeHost

CFG = parse_config("")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "root"))


def bundle(tmp_path: Path, name: str, annotations: dict[str, str] | None = None,
           namespaces: dict[str, str] | None = None, **changes: Any) -> str:
    path = tmp_path / name
    (path / "rootfs").mkdir(parents=True)
    config = default_spec()
    config["process"]["terminal"] = False
    if annotations:
        config["annotations"] = annotations
    for ns in config["linux"]["namespaces"]:
        if ns["type"] in (namespaces or {}):
            ns["path"] = namespaces[ns["type"]]
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def guest_namespaces(host: FakeHost, id: str) -> dict[str, str]:
    config = next(args["config"] for op, args in host.agent_calls if args.get("id") == id)
    return {ns["type"]: ns.get("path", "") for ns in config["linux"]["namespaces"]}


def cri(kind: str, sandbox: str) -> dict[str, str]:
    return {"io.kubernetes.cri.container-type": kind, "io.kubernetes.cri.sandbox-id": sandbox}


PROC = {t: f"/proc/{MY_PID}/ns/{n}" for t, n in (("network", "net"), ("ipc", "ipc"), ("uts", "uts"), ("pid", "pid"))}


def test_containerd_pod_container_joins_the_sandbox_init_namespaces(store: Store, tmp_path: Path) -> None:
    host = FakeHost()
    create(store, CFG, "a-pod", bundle(tmp_path, "s", cri("sandbox", "a-pod")), host=host)
    sandbox = store.load("a-pod")
    create(store, CFG, "c1", bundle(tmp_path, "c", cri("container", "a-pod"), PROC), host=host)
    st = store.load("c1")
    assert (st.kind, st.sandbox, st.netns) == ("container", "a-pod", sandbox.netns)
    assert host.calls.count("launch_vm") == 1
    ns = guest_namespaces(host, "c1")
    assert "network" not in ns  # the VM's own
    assert ns["ipc"] == ns["uts"].replace("uts", "ipc") == f"/proc/{sandbox.guest_pid}/ns/ipc"
    assert ns["pid"] == f"/proc/{sandbox.guest_pid}/ns/pid" and ns["mount"] == ""


def test_crio_pinned_namespaces_are_the_sandbox_s(store: Store, tmp_path: Path) -> None:
    """CRI-O names the pod's pinned namespaces in the sandbox and again in each container."""
    pinned = {"ipc": "/var/run/ipcns/p1", "uts": "/var/run/utsns/p1"}
    host = FakeHost()
    annotations = {"io.kubernetes.cri-o.ContainerType": "sandbox", "io.kubernetes.cri-o.SandboxID": "p1"}
    create(store, CFG, "p1", bundle(tmp_path, "s", annotations, pinned), host=host)
    assert guest_namespaces(host, "p1")["ipc"] == ""  # a new one in the VM
    annotations = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "p1"}
    create(store, CFG, "c1", bundle(tmp_path, "c", annotations, pinned), host=host)
    guest_pid = store.load("p1").guest_pid
    assert guest_namespaces(host, "c1")["uts"] == f"/proc/{guest_pid}/ns/uts"
    with pytest.raises(BundleError, match="belongs to no pellucid container"):
        create(store, CFG, "c2", bundle(tmp_path, "c2", annotations, {"ipc": "/var/run/ipcns/other"}), host=host)


def test_docker_network_container_joins_the_vm(store: Store, tmp_path: Path) -> None:
    host = FakeHost()
    create(store, CFG, "a", bundle(tmp_path, "a"), host=host)
    create(store, CFG, "b", bundle(tmp_path, "b", namespaces={"network": PROC["network"], "ipc": PROC["ipc"]}),
           host=host)
    st = store.load("b")
    assert (st.kind, st.sandbox, st.netns) == ("container", "a", store.load("a").netns)
    assert guest_namespaces(host, "b")["ipc"] == f"/proc/{store.load('a').guest_pid}/ns/ipc"
    assert host.calls.count("launch_vm") == 1


def test_a_namespace_of_no_pellucid_container_is_refused(store: Store, tmp_path: Path) -> None:
    host = FakeHost()
    with pytest.raises(BundleError, match="cannot join ipc namespace /proc/1/ns/ipc: it belongs to no pellucid"):
        create(store, CFG, "a", bundle(tmp_path, "a", namespaces={"ipc": "/proc/1/ns/ipc"}), host=host)
    assert host.live() == {}


def test_a_container_that_does_not_fit_in_the_pod_vm(store: Store, tmp_path: Path) -> None:
    host = FakeHost()
    create(store, CFG, "a-pod", bundle(tmp_path, "s", cri("sandbox", "a-pod")), host=host)
    big = default_spec()["linux"] | {"resources": {"memory": {"limit": 64 << 30}}}
    with pytest.raises(ContainerError, match=r"memory limit \(65536 MiB\) does not fit in the VM of a-pod"):
        create(store, CFG, "c1", bundle(tmp_path, "c", cri("container", "a-pod"), linux=big), host=host)
    assert not os.path.exists(store.dir("c1"))


def test_pod_vm_sized_from_containerd_sandbox_annotations(store: Store, tmp_path: Path) -> None:
    host = FakeHost()
    annotations = cri("sandbox", "p") | {"io.kubernetes.cri.sandbox-memory": str(512 << 20)}
    create(store, CFG, "p", bundle(tmp_path, "s", annotations), host=host)
    assert store.load("p").vm.memory_mib == CFG.hypervisor.memory_mib + 512


def test_the_vm_lives_while_any_container_in_it_lives(store: Store, tmp_path: Path) -> None:
    host = FakeHost()
    create(store, CFG, "a", bundle(tmp_path, "a"), host=host)
    create(store, CFG, "b", bundle(tmp_path, "b", namespaces={"network": PROC["network"]}), host=host)
    vm_cgroup = store.load("a").cgroup.dirs
    assert store.load("b").cgroup.dirs == vm_cgroup and host.joined[-1] == ("shim", vm_cgroup)
    assert host.calls.count("make_cgroup") == 1  # the VM's only
    lifecycle.delete(store, "a", force=True, host=host)
    assert len(host.vms) == 1 and ("delete_container", {"id": "a"}) in host.agent_calls
    assert len(host.cgroups) == 1  # it holds the VM, which b still uses
    assert os.path.join(store.dir("a"), "vm", "shared", "a") not in host.shares
    with pytest.raises(NotFound):
        lifecycle.state(store, "a")
    assert [s["id"] for s in lifecycle.list_states(store)] == ["b"]
    assert lifecycle.state(store, "b")["status"] == "created"
    lifecycle.delete(store, "b", force=True, host=host)
    assert host.vms == {} and host.networks == {} and host.cgroups == {} and store.ids() == []


def test_removing_the_sandbox_stops_the_pod_vm(store: Store, tmp_path: Path) -> None:
    host = FakeHost()
    create(store, CFG, "a-pod", bundle(tmp_path, "s", cri("sandbox", "a-pod")), host=host)
    create(store, CFG, "c1", bundle(tmp_path, "c", cri("container", "a-pod"), PROC), host=host)
    lifecycle.delete(store, "c1", force=True, host=host)
    assert len(host.vms) == 1 and os.path.join(store.dir("a-pod"), "vm", "shared", "c1") not in host.shares
    assert len(host.cgroups) == 1  # the pod VM's: a container's delete leaves it
    lifecycle.delete(store, "a-pod", force=True, host=host)
    assert host.vms == {} and host.cgroups == {} and store.ids() == []
