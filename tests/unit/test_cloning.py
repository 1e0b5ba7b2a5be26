"""A container's VM as a clone, without a VM: pellucid's cgroup for template builds (v1 and v2, on a
fake cgroupfs), made for a build and removed with the last template or after a failed build; the size
class, and the order start() goes in (fit, find, build elsewhere, find again, clone)."""

import os
import subprocess

import pytest

from pellucid import config
from pellucid.errors import ContainerError
from pellucid.vm import cloning
from pellucid.vm import template as tpl
from pellucid.vm.qemu_args import Nic, Share, VMSpec

from .conftest import V1
from .test_template import fake_template


def test_v1_every_hierarchy_gets_the_cgroup_and_a_cpuset_its_parents_cpus(v1):
    root, _ = v1
    dirs = cloning.prepare_cgroups(root)
    assert dirs == [f"{root}/{h}/pellucid-templates" for h in V1]  # the link "cpu" is no hierarchy
    assert read(f"{root}/cpuset/pellucid-templates/cpuset.cpus") == "0-3"
    assert read(f"{root}/cpuset/pellucid-templates/cpuset.mems") == "0"
    assert cloning.prepare_cgroups(root) == dirs == cloning.template_cgroups(root)  # again: nothing to do


def test_v2_the_slice_lets_its_child_account(v2):
    root, _ = v2
    assert cloning.prepare_cgroups(root) == [f"{root}/pellucid.slice/templates"]
    assert read(f"{root}/cgroup.subtree_control") == "+cpu +cpuset +memory +pids"
    assert os.path.isdir(f"{root}/pellucid.slice/templates")


@pytest.mark.usefixtures("cgroupfs_rmdir")
def test_a_cgroup_that_cannot_be_made_is_a_template_error(v1, monkeypatch):
    root, _ = v1

    def refuse(path: str, value: str) -> None:
        raise ContainerError(f"writing {path}: No space left on device")

    monkeypatch.setattr(cloning.cgroups, "_write", refuse)  # the cpuset's CPUs cannot be seeded
    with pytest.raises(tpl.TemplateError, match="pellucid's cgroup.*cpuset.cpus"):
        cloning.prepare_cgroups(root)
    assert not any(os.path.exists(f"{root}/{h}/pellucid-templates") for h in V1)  # what it made is gone again


@pytest.mark.usefixtures("cgroupfs_rmdir")
def test_the_cgroup_goes_with_the_last_template(v2, tmp_path):
    root, _ = v2
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    cloning.prepare_cgroups(root)
    fake_template(store, "k1")
    store = str(store)
    assert cloning.release_cgroups(store, root) is False  # a template is left: its pages are charged there
    assert os.path.isdir(f"{root}/pellucid.slice/templates")
    tpl.remove(store, "k1")
    assert cloning.release_cgroups(store, root) is True
    assert not os.path.exists(f"{root}/pellucid.slice")  # the slice it left empty too
    assert os.path.isdir(f"{root}/kubepods")


@pytest.mark.usefixtures("cgroupfs_rmdir")
def test_a_cgroup_a_build_is_in_stays(v1, tmp_path):
    root, _ = v1
    store = str(tmp_path / "store")
    dirs = cloning.prepare_cgroups(root)
    with open(f"{dirs[0]}/cgroup.procs", "w") as f:
        f.write("4242\n")
    assert cloning.release_cgroups(store, root) is False
    assert os.path.isdir(dirs[0])
    os.unlink(f"{dirs[0]}/cgroup.procs")  # the build is over
    assert cloning.release_cgroups(store, root) is True
    assert not any(os.path.exists(d) for d in dirs)


@pytest.mark.usefixtures("cgroupfs_rmdir")
def test_a_failed_build_leaves_no_cgroup(v1, tmp_path, monkeypatch):
    root, _ = v1
    monkeypatch.setattr(cloning.cgroups, "ROOT", root)
    monkeypatch.setattr(cloning.cgroups, "join", lambda dirs: None)  # the child writes no fake cgroup.procs
    path = tmp_path / "pellucid.toml"
    path.write_text(f'[hypervisor]\ntemplate_dir = "{tmp_path}/store"\n[assets]\ndir = "{tmp_path}/none"\n')
    cfg = config.load(str(path))
    with pytest.raises(tpl.TemplateError, match="build failed"):
        cloning.build_elsewhere(cfg, spec(memory_mib=256), 1)
    assert not any(os.path.exists(f"{root}/{h}/pellucid-templates") for h in V1)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def spec(**kw):
    base = dict(qemu="/q", machine="q35", accelerator="tcg", kernel="/k", image="/i", image_size=1 << 20,
                firmware="/f", name="pellucid-c1", memory_mib=300, vcpus=1, shares=(Share("sandbox", "/s"),))
    base.update(kw)
    return VMSpec(**base)


@pytest.fixture
def steps(tmp_path, monkeypatch):
    """start()'s calls to the factory and the builder, recorded (and the spec it clones); find() finds
    nothing until a build."""
    done = []
    built = []
    template = tpl.Template(str(tmp_path / "t"), "k", {})
    monkeypatch.setattr(tpl.Factory, "find", lambda self, s: done.append("find") or (template if built else None))
    monkeypatch.setattr(cloning, "build_elsewhere",
                        lambda cfg, s, slots: done.append(f"build {slots} slot(s)") or built.append(1))
    monkeypatch.setattr(tpl.Factory, "start_clone",
                        lambda self, s, workdir, template: done.extend(["clone", s]) or "vm")
    cfg = config.parse(f'[hypervisor]\ntemplate_dir = "{tmp_path}/store"\n')
    return cfg, done, built


def test_the_clone_is_at_its_size_class_and_a_vm_beyond_the_largest_is_refused(steps):
    cfg, done, _ = steps
    cloning.start(cfg, spec(memory_mib=300), "/w")
    assert [(s.memory_mib, s.vcpus) for s in done if not isinstance(s, str)] == [(512, 1)]
    done.clear()
    with pytest.raises(tpl.TemplateError, match="beyond the largest size class"):
        cloning.start(cfg, spec(memory_mib=9000), "/w")
    assert done == []


def test_the_template_is_built_elsewhere_then_cloned(steps):
    cfg, done, _ = steps
    assert cloning.start(cfg, spec(memory_mib=256), "/w") == ("vm", "k")
    assert done[:-1] == ["find", "build 1 slot(s)", "find", "clone"]
    done.clear()
    assert cloning.start(cfg, spec(memory_mib=256), "/w") == ("vm", "k")
    assert done[:-1] == ["find", "clone"]  # built already


def test_a_vm_that_cannot_be_a_clone_builds_nothing(steps):
    cfg, done, _ = steps
    for bad in (spec(nics=(Nic(mac="02:00:00:00:00:01", tap="t0", mtu=9000),)),
                spec(shares=(Share("sandbox", "/s", readonly=True),))):
        with pytest.raises(tpl.TemplateError, match="cannot be a clone"):
            cloning.start(cfg, bad, "/w")
    assert done == []


def test_a_build_that_does_not_match_is_a_template_error(steps, monkeypatch):
    cfg, done, _ = steps
    monkeypatch.setattr(cloning, "build_elsewhere", lambda cfg, s, slots: done.append("build"))
    with pytest.raises(tpl.TemplateError, match="does not match"):
        cloning.start(cfg, spec(memory_mib=256), "/w")
    assert done == ["find", "build", "find"]


def test_a_cgroup_removed_before_the_builder_joins_it_is_made_again(monkeypatch, tmp_path):
    """A release (of another store) may remove the cgroup between its making and the child's joining it."""
    made, started = [], []

    class Proc:
        returncode = 0

        def communicate(self, timeout):
            return b"", b""

    def popen(argv, **kw):
        started.append(argv)
        if len(started) == 1:
            raise subprocess.SubprocessError("Exception occurred in preexec_fn.")
        return Proc()

    monkeypatch.setattr(cloning, "prepare_cgroups", lambda: made.append(1) or ["/cg"])
    monkeypatch.setattr(cloning.subprocess, "Popen", popen)
    cfg = config.parse(f'[hypervisor]\ntemplate_dir = "{tmp_path}/store"\n')
    cloning.build_elsewhere(cfg, spec(memory_mib=256), 1)
    assert len(made) == len(started) == 2
