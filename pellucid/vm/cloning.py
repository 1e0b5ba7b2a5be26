"""A container's VM started as a clone of a template, as the monitor does it: the size rounded up to
its class, the template found or else built out of the container's context, the clone started.

A template's RAM is a tmpfs file, charged to the memory cgroup of the process that first touches its
pages: the template's QEMU. The monitor runs in the container's context (its cgroups), so it never
builds a template itself: it starts this module as a child process that is placed, before it runs
any code, in a cgroup of pellucid's own (``/sys/fs/cgroup/<hierarchy>/pellucid-templates`` in every
cgroup v1 hierarchy, as runc joins them all; ``/sys/fs/cgroup/pellucid.slice/templates`` on cgroup
v2), and waits for it; ``pellucid template build`` does the same. Clones map the file private: the
pages they only read stay charged there, the pages they write are their own. The cgroup is removed
when the last template of the store is (``pellucid template remove|prune``), and by a build that
failed where no template is left.

Whatever keeps a VM from being a clone (its size beyond the largest class, a NIC or share the
template cannot hold, a failed build or clone) is a :class:`~pellucid.vm.template.TemplateError` or
a VMError, with a reason for the monitor's log: the monitor then boots the VM cold.

    python -m pellucid.vm.cloning --accelerator tcg --memory 256 --vcpus 1 --nics 1 --share sandbox --dir D
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import replace

from ..config import Config
from ..config import load as load_config
from ..errors import PellucidError
from ..host_messages import HostCgroup
from ..runtime import cgroups
from . import template as tpl
from .machine import VM
from .qemu_args import VMSpec
from .size_class import SizeClass, size_class
from .template import Factory, TemplateError, class_spec, fits, shape_of

#: pellucid's own cgroup for template builds, the same path in every hierarchy (on cgroup v1, the
#: named ones and a hybrid host's unified one too, as runc joins them all)
CGROUP_V1 = "/pellucid-templates"
CGROUP_V2 = "/pellucid.slice/templates"
STDERR_TAIL = 2000
JOIN_ATTEMPTS = 2
#: seconds a failed build's processes (its QEMU, killed with it) get to leave the cgroup
RELEASE_SETTLE = 3.0


def cgroup_path(root: str) -> str:
    return CGROUP_V2 if cgroups.is_v2(root) else CGROUP_V1


def template_cgroups(root: str = "") -> list[str]:
    """pellucid's template cgroup's directories in the hierarchies mounted at ``root`` (the host's by default)."""
    root = root or cgroups.ROOT
    return cgroups.directories(cgroup_path(root), root)


def prepare_cgroups(root: str = "") -> list[str]:
    """Make pellucid's template cgroup (idempotent, no limits); its directories. TemplateError if it cannot be made."""
    root = root or cgroups.ROOT
    try:
        return cgroups.create(cgroup_path(root), {}, HostCgroup(), root).dirs
    except (PellucidError, OSError) as err:
        raise TemplateError(f"cannot make pellucid's cgroup for template builds: {err}") from None


def release_cgroups(store: str, root: str = "", *, settle: float = 0.0) -> bool:
    """Remove pellucid's template cgroup once ``store`` holds no template: nothing is charged to it
    any more (one store per host: a template of another store would stay charged to the removed
    cgroup, which the kernel keeps until its pages go). A build under way is in it, so it stays then
    (rmdir fails while a process is in it); ``settle``: seconds to wait for the processes of one that
    just failed to be gone. Whether the cgroup is gone."""
    root = root or cgroups.ROOT
    deadline = time.monotonic() + settle
    while not tpl.list_templates(store):
        if cgroups.remove_unused(cgroup_path(root), root):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return False


def class_of(spec: VMSpec) -> VMSpec:
    """``spec`` at its size class; TemplateError if no class holds it."""
    size = size_class(spec.memory_mib, spec.vcpus, os.cpu_count() or 1)
    if size is None:
        raise TemplateError(f"{spec.memory_mib} MiB with {spec.vcpus} vCPUs is beyond the largest size class")
    return replace(spec, memory_mib=size.memory_mib, vcpus=size.vcpus)


def build_elsewhere(cfg: Config, spec: VMSpec, nic_slots: int, *, store: str = "", verify_ram: bool = False) -> None:
    """Build the template for ``spec`` in ``store`` (the configured one by default) in a child process
    placed in pellucid's cgroup, and wait for it. A failed build leaves no cgroup where no template is."""
    store = store or cfg.hypervisor.template_dir
    limit = 2 * cfg.hypervisor.boot_timeout  # the template's boot, then its save
    argv = [sys.executable, "-m", "pellucid.vm.cloning", "--accelerator", spec.accelerator,
            "--memory", str(spec.memory_mib), "--vcpus", str(spec.vcpus), "--nics", str(nic_slots),
            "--dir", store, *(f"--share={s.tag}" for s in spec.shares), *(["--verify-ram"] if verify_ram else [])]
    if cfg.path:
        argv += ["--config", cfg.path]
    try:
        for attempt in range(JOIN_ATTEMPTS):  # a release may remove the cgroup between its making and our joining it
            dirs = prepare_cgroups()
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, preexec_fn=lambda: cgroups.join(dirs), close_fds=True)
                break
            except (OSError, subprocess.SubprocessError) as err:
                if attempt == JOIN_ATTEMPTS - 1:
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
    except BaseException:
        with contextlib.suppress(PellucidError, OSError):
            release_cgroups(store, settle=RELEASE_SETTLE)
        raise


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
    p.add_argument("--verify-ram", action="store_true", help="check an existing template's RAM checksum too")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        spec = class_spec(cfg, args.accelerator, SizeClass(args.memory, args.vcpus), tuple(args.share))
        Factory(args.dir, boot_timeout=cfg.hypervisor.boot_timeout, nic_slots=args.nics).ensure(
            spec, verify_ram=args.verify_ram)
    except (PellucidError, OSError) as err:
        print(f"pellucid-template-build: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
