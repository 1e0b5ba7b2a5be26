"""A container's VM as a clone, without a VM: pellucid's cgroups for template builds (v1 and v2), the
size class, and the order start() goes in (fit, find, build elsewhere, find again, clone)."""

import os

import pytest

from pellucid import config
from pellucid.vm import cloning
from pellucid.vm import template as tpl
from pellucid.vm.qemu_args import Nic, Share, VMSpec


def mountinfo(root, hybrid=True):
    """A mount table: cgroup v1 hierarchies and a v2 one (hybrid), or v2 alone, under ``root``."""
    lines = [f"22 1 0:20 / {root}/proc rw - proc proc rw"]
    if hybrid:
        for i, (name, opts) in enumerate((("memory", "rw,memory"), ("cpu,cpuacct", "rw,cpu,cpuacct"),
                                          ("cpuset", "rw,cpuset"), ("systemd", "rw,xattr,name=systemd"))):
            lines.append(f"{30 + i} 25 0:{30 + i} / {root}/{name} rw,relatime shared:{i} - cgroup cgroup {opts}")
        lines.append(f"40 25 0:40 / {root}/unified rw,relatime shared:9 - cgroup2 cgroup2 rw")
    else:
        lines.append(f"40 1 0:40 / {root} rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate")
    return "\n".join(lines) + "\n"


def test_v1_every_hierarchy_with_a_controller_and_not_an_empty_unified_one(tmp_path):
    assert cloning.cgroup_dirs(mountinfo(tmp_path)) == [
        f"{tmp_path}/cpu,cpuacct/pellucid-templates", f"{tmp_path}/cpuset/pellucid-templates",
        f"{tmp_path}/memory/pellucid-templates"]


def test_v2_the_unified_hierarchy_when_it_has_controllers(tmp_path):
    assert cloning.cgroup_dirs(mountinfo(tmp_path, hybrid=False), "cpu memory pids") == [
        f"{tmp_path}/pellucid.slice/templates"]
    assert cloning.cgroup_dirs(mountinfo(tmp_path, hybrid=False), "") == []


def test_v1_cgroups_are_made_and_a_cpuset_gets_its_parents_cpus(tmp_path):
    for name in ("memory", "cpu,cpuacct", "cpuset", "systemd", "unified"):
        (tmp_path / name).mkdir()
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    # What the kernel makes in a new v1 cpuset: empty cpus and mems.
    os.makedirs(tmp_path / "cpuset" / cloning.CGROUP_V1)
    (tmp_path / "cpuset" / cloning.CGROUP_V1 / "cpuset.cpus").write_text("")
    (tmp_path / "cpuset" / cloning.CGROUP_V1 / "cpuset.mems").write_text("")
    dirs = cloning.prepare_cgroups(mountinfo(tmp_path))
    assert all(os.path.isdir(d) for d in dirs) and len(dirs) == 3
    assert (tmp_path / "cpuset" / cloning.CGROUP_V1 / "cpuset.cpus").read_text() == "0-1"
    assert (tmp_path / "cpuset" / cloning.CGROUP_V1 / "cpuset.mems").read_text() == "0"
    assert not (tmp_path / "systemd" / cloning.CGROUP_V1).exists()
    assert cloning.prepare_cgroups(mountinfo(tmp_path)) == dirs  # again: nothing to do


def test_v2_the_slice_lets_its_child_account_memory(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    slice_dir = tmp_path / "pellucid.slice"
    slice_dir.mkdir()
    (slice_dir / "cgroup.controllers").write_text("cpu io memory pids\n")
    (slice_dir / "cgroup.subtree_control").write_text("")
    assert cloning.prepare_cgroups(mountinfo(tmp_path, hybrid=False)) == [f"{slice_dir}/templates"]
    assert (slice_dir / "cgroup.subtree_control").read_text() == "+cpu +io +memory +pids"
    assert (slice_dir / "templates").is_dir()


def test_a_cgroup_that_cannot_be_made_is_a_template_error(tmp_path):
    (tmp_path / "memory").write_text("not a directory")
    info = f"30 25 0:30 / {tmp_path}/memory rw - cgroup cgroup rw,memory\n"
    with pytest.raises(tpl.TemplateError, match="pellucid's cgroup"):
        cloning.prepare_cgroups(info)


def test_joining_writes_0_to_each_cgroup_procs(tmp_path):
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    for d in dirs:
        os.mkdir(d)
        open(os.path.join(d, "cgroup.procs"), "w").close()
    cloning.join_cgroups(dirs)
    assert [open(os.path.join(d, "cgroup.procs")).read() for d in dirs] == ["0", "0"]


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
