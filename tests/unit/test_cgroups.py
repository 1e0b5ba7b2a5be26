"""The VM's host cgroup on a fake cgroupfs (v1 as on this host, v2 as on current distributions):
where runc would put it, the limits plus the overhead, and its removal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pellucid.errors import ContainerError
from pellucid.host_messages import HostCgroup
from pellucid.runtime import cgroups

V1 = ("cpu,cpuacct", "cpuset", "memory", "pids", "systemd", "unified")
OVERHEAD = HostCgroup(memory_overhead=448 << 20, cpu_millis=250, pids=512)
SELF = "1:cpu,cpuacct:/\n3:cpuset:/\n4:memory:/user/me\n8:pids:/\n9:name=systemd:/\n0::/\n"


def read(path) -> str:
    return open(path).read().strip()


@pytest.fixture(autouse=True)
def cgroupfs_rmdir(monkeypatch):
    """rmdir as on a cgroupfs: a cgroup's control files go with it."""
    rmdir = os.rmdir

    def remove(path: str) -> None:
        if os.path.isdir(path):
            for name in os.listdir(path):
                if os.path.isfile(os.path.join(path, name)):
                    os.unlink(os.path.join(path, name))
        rmdir(path)

    monkeypatch.setattr(cgroups.os, "rmdir", remove)


@pytest.fixture
def v1(tmp_path):
    root = tmp_path / "cgroup"
    for name in V1:
        d = root / name
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("")
    (root / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    (root / "memory" / "user" / "me").mkdir(parents=True)
    os.symlink("cpu,cpuacct", root / "cpu")  # as hosts co-mount them: the link is not a hierarchy
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text(SELF)
    return str(root), str(self_cgroup)


@pytest.fixture
def v2(tmp_path):
    root = tmp_path / "cgroup2"
    (root / "kubepods").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "kubepods" / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (root / "kubepods" / "cgroup.subtree_control").write_text("")
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("0::/user.slice\n")
    return str(root), str(self_cgroup)


@pytest.mark.parametrize("value, path", [
    ("system.slice:docker:abc", "/system.slice/docker-abc.scope"),
    (":cri-containerd:abc", "/system.slice/cri-containerd-abc.scope"),
    ("kubepods-besteffort-pod12.slice:cri-containerd:abc",
     "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"),
    ("-.slice:pellucid:abc", "/pellucid-abc.scope"),
    ("system.slice::abc", "/system.slice/abc.scope"),
    ("kubepods.slice:x:kubepods-pod1.slice", "/kubepods.slice/kubepods-pod1.slice"),
])
def test_systemd_form_converted(value, path):
    assert cgroups.cgroup_path(value, "abc", systemd=True) == path


@pytest.mark.parametrize("value", ["abc", "a:b", "a:b:c:d", "bad--name.slice:p:n", "/abs.slice:p:n", "-a.slice:p:n",
                                   "system.slice:p:"])
def test_systemd_form_refused(value):
    with pytest.raises(ContainerError):
        cgroups.cgroup_path(value, "abc", systemd=True)


@pytest.mark.parametrize("value, systemd", [("/", False), ("/a/..", False), ("..", False),
                                             ("x:y:-.slice", True)])
def test_a_hierarchy_root_is_refused(value, systemd):
    """delete removes the VM's cgroup and kills what is left in it: never the root's."""
    with pytest.raises(ContainerError, match="root"):
        cgroups.cgroup_path(value, "abc", systemd=systemd)


def test_systemd_default_path():
    assert cgroups.cgroup_path("", "abc", systemd=True) == "/system.slice/pellucid-abc.scope"


@pytest.mark.parametrize("value, path", [
    ("/docker/abc", "/docker/abc"), ("/a/../../b", "/b"), ("rel/x", "rel/x"), ("../../x", "x"), ("", "abc"),
    ("//docker//abc/", "/docker/abc"),
])
def test_cgroupfs_paths_as_runc_cleans_them(value, path):
    assert cgroups.cgroup_path(value, "abc", systemd=False) == path


def test_v1_absolute_path_in_every_hierarchy_with_limits(v1):
    root, self_cgroup = v1
    resources = {"memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000, "shares": 512,
                                                        "cpus": "1-2", "mems": "0"}, "pids": {"limit": 20}}
    cg = cgroups.create("/docker/abc", resources, OVERHEAD, root=root, self_cgroup=self_cgroup)
    assert cg.dirs == [f"{root}/{h}/docker/abc" for h in V1]
    assert read(f"{root}/memory/docker/abc/memory.limit_in_bytes") == str((64 + 448) << 20)
    cpu = f"{root}/cpu,cpuacct/docker/abc"
    assert (read(f"{cpu}/cpu.cfs_period_us"), read(f"{cpu}/cpu.cfs_quota_us"), read(f"{cpu}/cpu.shares")) == \
        ("100000", "75000", "768")
    # A new cpuset level starts empty in v1: each is seeded from its parent, then the limit written.
    assert read(f"{root}/cpuset/docker/cpuset.cpus") == "0-3" and read(f"{root}/cpuset/docker/cpuset.mems") == "0"
    assert read(f"{root}/cpuset/docker/abc/cpuset.cpus") == "1-2"
    assert read(f"{root}/pids/docker/abc/pids.max") == "512", "the host pids bound is the overhead's"
    assert not os.path.exists(f"{root}/memory/docker/abc/pids.max")


def test_v1_existing_empty_cpuset_level_is_seeded(v1):
    """A pod cgroup made by a plain mkdir has empty cpuset.cpus/mems, which would refuse every
    process with ENOSPC: seeded from its parent, as runc does; one already set is left alone."""
    root, self_cgroup = v1
    pod = f"{root}/cpuset/kubepods/pod1"
    os.makedirs(pod)
    for name in ("cpuset.cpus", "cpuset.mems"):
        (Path(root) / "cpuset/kubepods" / name).write_text("2-3\n")
        (Path(pod) / name).write_text("\n")
    cgroups.create("/kubepods/pod1/abc", {}, OVERHEAD, root=root, self_cgroup=self_cgroup)
    assert read(f"{root}/cpuset/kubepods/cpuset.cpus") == "2-3"
    assert read(f"{pod}/cpuset.cpus") == "2-3" and read(f"{pod}/abc/cpuset.mems") == "2-3"


def test_v1_relative_path_below_own_cgroup(v1):
    root, self_cgroup = v1
    cg = cgroups.create("abc", {}, OVERHEAD, root=root, self_cgroup=self_cgroup)
    assert f"{root}/memory/user/me/abc" in cg.dirs and f"{root}/pids/abc" in cg.dirs
    assert f"{root}/unified/abc" in cg.dirs
    assert not os.path.exists(f"{root}/memory/user/me/abc/memory.limit_in_bytes"), "no limit asked, none set"


def test_v2_enables_controllers_down_the_path(v2):
    root, self_cgroup = v2
    resources = {"memory": {"limit": 64 << 20}, "cpu": {"quota": 200000, "shares": 1024}}
    cg = cgroups.create("/kubepods/pod1/abc", resources, OVERHEAD, root=root, self_cgroup=self_cgroup)
    assert cg.dirs == [f"{root}/kubepods/pod1/abc"]
    assert read(f"{root}/cgroup.subtree_control") == "+cpu +cpuset +memory +pids"
    assert read(f"{root}/kubepods/cgroup.subtree_control") == "+cpu +cpuset +memory +pids"
    d = cg.dirs[0]
    assert read(f"{d}/memory.max") == str((64 + 448) << 20)
    assert read(f"{d}/cpu.max") == "225000 100000"
    assert read(f"{d}/cpu.weight") == str(cgroups.shares_to_weight(1280))
    assert read(f"{d}/pids.max") == "512"


def test_v2_relative_path_below_own_cgroup(v2):
    root, self_cgroup = v2
    cg = cgroups.create("abc", {}, OVERHEAD, root=root, self_cgroup=self_cgroup)
    assert cg.dirs == [f"{root}/user.slice/abc"]


def test_update_writes_the_new_limit_plus_overhead(v2):
    root, self_cgroup = v2
    cg = cgroups.create("/c", {"memory": {"limit": 64 << 20}}, OVERHEAD, root=root, self_cgroup=self_cgroup)
    cgroups.apply(cg, {"memory": {"limit": 128 << 20}}, root=root)
    assert read(f"{root}/c/memory.max") == str((128 + 448) << 20)


def test_a_failed_create_leaves_nothing(v1, monkeypatch):
    root, self_cgroup = v1
    write = cgroups._write

    def refuse_cpus(path: str, value: str) -> None:
        if path.endswith("/abc/cpuset.cpus"):
            raise ContainerError(f"writing {path}: Numerical result out of range")
        write(path, value)

    monkeypatch.setattr(cgroups, "_write", refuse_cpus)
    with pytest.raises(ContainerError, match="cpuset.cpus"):
        cgroups.create("/docker/abc", {"cpu": {"cpus": "7"}}, OVERHEAD, root=root, self_cgroup=self_cgroup)
    assert not any(os.path.exists(f"{root}/{h}/docker/abc") for h in V1)


def test_shares_to_weight_as_runc():
    assert (cgroups.shares_to_weight(2), cgroups.shares_to_weight(1024), cgroups.shares_to_weight(262144)) == \
        (1, 39, 10000)


def test_remove_is_idempotent(v2):
    root, self_cgroup = v2
    cg = cgroups.create("/c", {}, OVERHEAD, root=root, self_cgroup=self_cgroup)
    cgroups.remove(cg)
    cgroups.remove(cg)
    assert not os.path.exists(cg.dirs[0])


def test_a_failed_create_leaves_a_cgroup_that_was_there(v2, monkeypatch):
    root, self_cgroup = v2
    os.makedirs(f"{root}/kubepods/abc")

    def refuse(path: str, value: str) -> None:
        raise ContainerError(f"writing {path}: Invalid argument")

    monkeypatch.setattr(cgroups, "_write", refuse)
    with pytest.raises(ContainerError):
        cgroups.create("/kubepods/abc", {"memory": {"limit": 1}}, OVERHEAD, root=root, self_cgroup=self_cgroup)
    assert os.path.isdir(f"{root}/kubepods/abc")
