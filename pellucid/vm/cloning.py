"""A container's VM started as a clone of a template, as the monitor does it: the size rounded up to
its class, the template found or else built out of the container's context, the clone started.

A template's RAM is a tmpfs file, charged to the memory cgroup of the process that first touches its
pages: the template's QEMU. The monitor runs in the container's context (its cgroups), so it never
builds a template itself: it starts this module as a child process that is placed, before it runs
any code, in a cgroup of pellucid's own (``/sys/fs/cgroup/<hierarchy>/pellucid-templates`` in each
cgroup v1 hierarchy; ``/sys/fs/cgroup/pellucid.slice/templates`` on the v2 unified hierarchy when it
has controllers), and waits for it. ``pellucid template build`` joins the same cgroup. Clones map
the file private: the pages they only read stay charged there, the pages they write are their own.

Whatever keeps a VM from being a clone (its size beyond the largest class, a NIC or share the
template cannot hold, a failed build or clone) is a :class:`~pellucid.vm.template.TemplateError` or
a VMError, with a reason for the monitor's log: the monitor then boots the VM cold.

    python -m pellucid.vm.cloning --accelerator tcg --memory 256 --vcpus 1 --nics 1 --share sandbox --dir D
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import replace

from .. import mountinfo as mountinfo_mod
from ..config import Config
from ..config import load as load_config
from ..errors import PellucidError
from .machine import VM
from .qemu_args import VMSpec
from .size_class import SizeClass, size_class
from .template import Factory, TemplateError, class_spec, fits, shape_of

CGROUP_V1 = "pellucid-templates"
CGROUP_V2 = "pellucid.slice/templates"
#: cgroup v1 controllers (a hierarchy with any of them is joined; named ones such as name=systemd are not)
V1_CONTROLLERS = frozenset(("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
                            "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"))
V2_CONTROLLERS = ("cpu", "io", "memory", "pids")
STDERR_TAIL = 2000


def _mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of each cgroup mount in a mountinfo text."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) > sep + 3 and fields[sep + 1] in ("cgroup", "cgroup2"):
            point = os.fsdecode(mountinfo_mod.unescape(os.fsencode(fields[4])))  # exact, as the kernel escapes
            found.append((point, fields[sep + 1], fields[sep + 3]))
    return found


def cgroup_dirs(mountinfo: str, v2_controllers: str = "") -> list[str]:
    """pellucid's template cgroup in each hierarchy that accounts something: every v1 hierarchy with a
    controller, and the v2 one if ``v2_controllers`` (its root's cgroup.controllers) names any."""
    dirs = []
    for point, fstype, options in _mounts(mountinfo):
        if fstype == "cgroup" and V1_CONTROLLERS & set(options.split(",")):
            dirs.append(os.path.join(point, CGROUP_V1))
        elif fstype == "cgroup2" and v2_controllers.split():
            dirs.append(os.path.join(point, CGROUP_V2))
    return sorted(set(dirs))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def template_cgroups(mountinfo: str | None = None) -> list[str]:
    """pellucid's template cgroups in the hierarchies mounted here (``mountinfo``: this process's
    mount table by default)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    v2_root = next((p for p, t, _ in _mounts(mountinfo) if t == "cgroup2"), "")
    return cgroup_dirs(mountinfo, _read(os.path.join(v2_root, "cgroup.controllers")) if v2_root else "")


def prepare_cgroups(mountinfo: str | None = None) -> list[str]:
    """Make pellucid's template cgroups (idempotent); their directories. TemplateError if one cannot be made."""
    dirs = template_cgroups(mountinfo)
    try:
        for path in dirs:
            if path.endswith(CGROUP_V2):
                parent = os.path.dirname(path)
                os.makedirs(parent, exist_ok=True)
                wanted = [c for c in V2_CONTROLLERS if c in _read(os.path.join(parent, "cgroup.controllers")).split()]
                if wanted:  # children of pellucid.slice account what their parent may
                    with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                        f.write(" ".join(f"+{c}" for c in wanted))
            os.makedirs(path, exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset starts empty: nothing could join it
                own = os.path.join(path, name)
                if os.path.exists(own) and not _read(own):
                    with open(own, "w") as f:
                        f.write(_read(os.path.join(os.path.dirname(path), name)))
    except OSError as err:
        raise TemplateError(f"cannot make pellucid's cgroup for template builds: {err}") from None
    return dirs


def join_cgroups(dirs: list[str]) -> None:
    """Move the calling process into each cgroup of ``dirs`` (also safe between fork and exec)."""
    for path in dirs:
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def class_of(spec: VMSpec) -> VMSpec:
    """``spec`` at its size class; TemplateError if no class holds it."""
    size = size_class(spec.memory_mib, spec.vcpus, os.cpu_count() or 1)
    if size is None:
        raise TemplateError(f"{spec.memory_mib} MiB with {spec.vcpus} vCPUs is beyond the largest size class")
    return replace(spec, memory_mib=size.memory_mib, vcpus=size.vcpus)


def build_elsewhere(cfg: Config, spec: VMSpec, nic_slots: int) -> None:
    """Build the template for ``spec`` in a child process placed in pellucid's cgroup, and wait for it."""
    dirs = prepare_cgroups()
    limit = 2 * cfg.hypervisor.boot_timeout  # the template's boot, then its save
    argv = [sys.executable, "-m", "pellucid.vm.cloning", "--accelerator", spec.accelerator,
            "--memory", str(spec.memory_mib), "--vcpus", str(spec.vcpus), "--nics", str(nic_slots),
            "--dir", cfg.hypervisor.template_dir, *(f"--share={s.tag}" for s in spec.shares)]
    if cfg.path:
        argv += ["--config", cfg.path]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=lambda: join_cgroups(dirs), close_fds=True)
    except (OSError, subprocess.SubprocessError) as err:
        raise TemplateError(f"cannot start the template's build: {err}") from None
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()  # its QEMU dies with it
        proc.wait()
        raise TemplateError(f"the template's build took more than {limit:g}s") from None
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip()[-STDERR_TAIL:]
        raise TemplateError(f"the template's build failed ({proc.returncode}): {said}")


def start(cfg: Config, spec: VMSpec, workdir: str) -> tuple[VM, str]:
    """A running clone for ``spec`` at its size class (``vm.spec``), its agent ready with its own boot
    id, and its template's key: the template is built first if there is none. The caller mounts the
    shares and configures the network, as after a cold boot, and stops the VM."""
    spec = class_of(spec)
    factory = Factory(cfg.hypervisor.template_dir, boot_timeout=cfg.hypervisor.boot_timeout)
    shape = shape_of(spec, factory.nic_slots)
    why = fits(spec, shape)
    if why:
        raise TemplateError(f"this VM cannot be a clone: {why}")
    template = factory.find(spec)
    if template is None:
        build_elsewhere(cfg, spec, shape.nic_slots)
        template = factory.find(spec)
        if template is None:
            raise TemplateError("the template just built does not match this VM (were its files replaced?)")
    return factory.start_clone(spec, workdir, template=template), template.key


def main(argv: list[str] | None = None) -> int:
    """Build one template (the child :func:`build_elsewhere` starts, already in pellucid's cgroup)."""
    p = argparse.ArgumentParser(prog="pellucid-template-build")
    p.add_argument("--config", default=None)
    p.add_argument("--accelerator", required=True)
    p.add_argument("--memory", type=int, required=True)
    p.add_argument("--vcpus", type=int, required=True)
    p.add_argument("--nics", type=int, default=1)
    p.add_argument("--share", action="append", default=[])
    p.add_argument("--dir", required=True)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        spec = class_spec(cfg, args.accelerator, SizeClass(args.memory, args.vcpus), tuple(args.share))
        Factory(args.dir, boot_timeout=cfg.hypervisor.boot_timeout, nic_slots=args.nics).ensure(spec)
    except (PellucidError, OSError) as err:
        print(f"pellucid-template-build: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
