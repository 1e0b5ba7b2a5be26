"""Fakes of a cgroupfs shared by the unit tests: v1 as on this host, v2 as on current distributions."""

from __future__ import annotations

import errno
import os

import pytest

from pellucid.runtime import cgroups

V1 = ("cpu,cpuacct", "cpuset", "memory", "pids", "systemd", "unified")
SELF = "1:cpu,cpuacct:/\n3:cpuset:/\n4:memory:/user/me\n8:pids:/\n9:name=systemd:/\n0::/\n"


@pytest.fixture
def cgroupfs_rmdir(monkeypatch):
    """rmdir as on a cgroupfs: a cgroup's control files go with it; one a process is in is busy."""
    rmdir = os.rmdir

    def remove(path: str, *, dir_fd: int | None = None) -> None:
        if dir_fd is not None:  # shutil.rmtree's, of a plain directory (os is one module for all)
            return rmdir(path, dir_fd=dir_fd)
        procs = os.path.join(path, "cgroup.procs")
        if os.path.isfile(procs) and open(procs).read().split():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        if os.path.isdir(path):
            for name in os.listdir(path):
                if os.path.isfile(os.path.join(path, name)):
                    os.unlink(os.path.join(path, name))
        return rmdir(path)

    monkeypatch.setattr(cgroups.os, "rmdir", remove)


@pytest.fixture
def v1(tmp_path):
    """A cgroup v1 root (hybrid: a unified hierarchy beside the v1 ones) and a /proc/self/cgroup."""
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
    """A cgroup v2 root and a /proc/self/cgroup."""
    root = tmp_path / "cgroup2"
    (root / "kubepods").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "kubepods" / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (root / "kubepods" / "cgroup.subtree_control").write_text("")
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("0::/user.slice\n")
    return str(root), str(self_cgroup)
