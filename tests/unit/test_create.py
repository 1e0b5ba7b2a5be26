"""`create` on a fake host: what it does, in order, and that a failure at any step undoes every
step before it (netns, shim, network, VM, share, state), so that nothing is left behind."""

from __future__ import annotations

import json
import os

import pytest

from pellucid.config import parse as parse_config
from pellucid.errors import ContainerError, NotFound, VMError
from pellucid.oci.default_spec import default_spec
from pellucid.runtime.create import create
from pellucid.state import Status
from pellucid.store import Store
from tests.fakes import MY_PID, MY_START, FakeHost, Injected

HOOK = {"path": "/bin/true"}
# The steps of a sandbox's create, in order, and what undoes each.
STEPS = ["make_cgroup", "pin_netns", "start_shim", "hook:prestart", "hook:createRuntime", "connect_network", "launch_vm",
         "wait_ready", "share", "send"]
UNDO = {"make_cgroup": "remove_cgroup", "pin_netns": "release_netns", "start_shim": None, "connect_network": "disconnect_network",
        "launch_vm": "stop_vm", "share": "unshare"}
# Steps that may fail half-way: their undo runs even when they are the one that fails.
HALF_DONE = {"connect_network", "share"}


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "root"))


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "bundle"
    (path / "rootfs").mkdir(parents=True)
    config = default_spec()
    config["process"]["terminal"] = False
    config["hooks"] = {stage: [HOOK] for stage in ("prestart", "createRuntime", "poststart", "poststop")}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


CFG = parse_config("")


def test_create_records_everything_delete_needs(store, bundle, tmp_path):
    host = FakeHost()
    pid_file = tmp_path / "pid"
    shim = create(store, CFG, "c1", bundle, pid_file=str(pid_file), host=host)
    assert [c for c in host.calls if c in STEPS] == STEPS
    st = store.load("c1")
    vm_dir = os.path.join(store.dir("c1"), "vm")
    assert store.status(st) is Status.CREATED and st.creator_pid == 0
    assert (st.pid, st.pid_start) == (shim.pid, shim.start) == (MY_PID, MY_START)
    assert (st.monitor_pid, st.monitor_start) == (MY_PID, MY_START)
    assert st.netns == os.path.join(vm_dir, "netns") and st.network.nics[0].tap == "pltap0"
    assert st.vm.memory_mib == CFG.hypervisor.memory_mib and st.process == 1 and st.guest_pid == 101
    assert st.poststart == [HOOK] and st.poststop == [HOOK] and not st.terminal
    assert host.vms[vm_dir].desc.network == st.network
    assert shim.request.op == "create_container" and shim.request.monitor == os.path.join(vm_dir, "monitor.sock")
    assert pid_file.read_text() == str(shim.pid)
    assert host.hooks == ["prestart", "createRuntime"]


@pytest.mark.parametrize("step", STEPS + ["write_pid_file"])
def test_a_failure_at_any_step_undoes_all_before_it(store, bundle, tmp_path, step):
    host = FakeHost(fail=step)
    pid_file = str(tmp_path / ("no-such-dir" if step == "write_pid_file" else "") / "pid")
    with pytest.raises((Injected, VMError, OSError)):
        create(store, CFG, "c1", bundle, pid_file=pid_file, host=host)
    assert host.live() == {}, "something was left behind"
    with pytest.raises(NotFound):
        store.load("c1")
    assert not os.path.exists(store.dir("c1"))
    done = STEPS if step == "write_pid_file" else STEPS[:STEPS.index(step) + (step in HALF_DONE)]
    for earlier in done:
        if UNDO.get(earlier):
            assert UNDO[earlier] in host.calls, f"{earlier} was not undone"
    undos = [c for c in host.calls if c in UNDO.values()]
    expected = [UNDO[s] for s in reversed(done) if UNDO.get(s)]
    assert undos == expected, "undone out of order"
    aborted = [s for s in host.shims if s.status is not None]
    assert len(aborted) == (1 if "start_shim" in done else 0)


def test_container_of_a_pod_joins_its_sandbox(store, bundle, tmp_path):
    host = FakeHost()
    create(store, CFG, "pod", bundle, host=host)
    config = json.loads(open(os.path.join(bundle, "config.json")).read())
    config["annotations"] = {"io.kubernetes.cri.container-type": "container",
                             "io.kubernetes.cri.sandbox-id": "pod"}
    other = tmp_path / "b2"
    (other / "rootfs").mkdir(parents=True)
    (other / "config.json").write_text(json.dumps(config))
    host.calls.clear()
    create(store, CFG, "c2", str(other), host=host)
    st = store.load("c2")
    assert (st.kind, st.sandbox, st.netns) == ("container", "pod", store.load("pod").netns)
    assert "launch_vm" not in host.calls and "pin_netns" not in host.calls
    assert os.path.join(store.dir("pod"), "vm", "shared", "c2") in host.shares


def test_container_of_a_pod_without_its_sandbox(store, bundle):
    config = json.loads(open(os.path.join(bundle, "config.json")).read())
    config["annotations"] = {"io.kubernetes.cri.container-type": "container",
                             "io.kubernetes.cri.sandbox-id": "nope"}
    open(os.path.join(bundle, "config.json"), "w").write(json.dumps(config))
    host = FakeHost()
    with pytest.raises(ContainerError, match="sandbox nope of container c1 does not exist"):
        create(store, CFG, "c1", bundle, host=host)
    assert host.live() == {} and not os.path.exists(store.dir("c1"))


def test_create_then_delete_leaves_nothing(store, bundle):
    from pellucid.runtime import lifecycle
    host = FakeHost()
    create(store, CFG, "c1", bundle, host=host)
    lifecycle.start(store, "c1", host)
    lifecycle.delete(store, "c1", force=True, host=host)
    assert host.vms == {} and host.networks == {} and host.shares == set()
    assert host.hooks == ["prestart", "createRuntime", "poststart", "poststop"]
    assert not os.path.exists(store.dir("c1"))


def test_the_vm_and_its_shims_start_in_its_host_cgroup(store, bundle, tmp_path):
    """QEMU's monitor and every shim (init, exec, a pod container's) start in the owning container's
    cgroup, made with its limits; update changes it; delete removes it."""
    from pellucid.runtime import exec as exec_mod
    from pellucid.runtime import lifecycle
    config = json.loads(open(os.path.join(bundle, "config.json")).read())
    config["linux"]["cgroupsPath"] = "/docker/c1"
    config["linux"]["resources"] = {"memory": {"limit": 64 << 20}}
    open(os.path.join(bundle, "config.json"), "w").write(json.dumps(config))
    host = FakeHost()
    create(store, CFG, "c1", bundle, host=host)
    dirs = ["/fake-cgroup/docker/c1"]
    assert host.cgroups == {"/docker/c1": {"memory": {"limit": 64 << 20}}}
    assert store.load("c1").cgroup.memory_overhead == (CFG.hypervisor.memory_mib + CFG.overhead.memory_mib) << 20
    exec_mod.exec_process(store, "c1", {"args": ["true"], "cwd": "/"}, host=host)
    assert host.joined == [("shim", dirs), ("monitor", dirs), ("shim", dirs)]
    lifecycle.update(store, "c1", {"memory": {"limit": 32 << 20}}, host=host)
    assert host.cgroup_updates == [(dirs[0], {"memory": {"limit": 32 << 20}})]
    lifecycle.delete(store, "c1", force=True, host=host)
    assert host.cgroups == {} and host.calls.index("remove_cgroup") > host.calls.index("stop_vm")


def test_systemd_cgroup_path_is_converted(store, bundle):
    config = json.loads(open(os.path.join(bundle, "config.json")).read())
    config["linux"]["cgroupsPath"] = "system.slice:docker:c1"
    open(os.path.join(bundle, "config.json"), "w").write(json.dumps(config))
    host = FakeHost()
    create(store, CFG, "c1", bundle, systemd_cgroup=True, host=host)
    assert list(host.cgroups) == ["/system.slice/docker-c1.scope"]


def test_a_pod_container_shim_joins_the_sandbox_cgroup(store, bundle, tmp_path):
    host = FakeHost()
    create(store, CFG, "pod", bundle, host=host)
    config = json.loads(open(os.path.join(bundle, "config.json")).read())
    config["annotations"] = {"io.kubernetes.cri.container-type": "container",
                             "io.kubernetes.cri.sandbox-id": "pod"}
    other = tmp_path / "b2"
    (other / "rootfs").mkdir(parents=True)
    (other / "config.json").write_text(json.dumps(config))
    create(store, CFG, "c2", str(other), host=host)
    assert host.joined[-1] == ("shim", store.load("pod").cgroup.dirs) and len(host.cgroups) == 1
    from pellucid.runtime import lifecycle
    lifecycle.delete(store, "c2", force=True, host=host)
    assert len(host.cgroups) == 1, "a pod container's delete removed its sandbox's cgroup"
