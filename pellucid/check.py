"""`pellucid check`: can this host run pellucid? Host capabilities, then a real boot of the guest."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from . import messages
from .build import cache
from .config import Config
from .errors import PellucidError
from .kernfs import read_value
from .vm import accel
from .vm import file_view, qemu_fixes
from .vm.assets import resolve
from .vm.machine import VM
from .vm.qemu_args import FSDEV_OPTIONS, Share
from .vm.spec import make_spec


@dataclass
class Item:
    name: str
    ok: bool
    detail: str
    required: bool = True


@dataclass
class Report:
    items: list[Item] = field(default_factory=list)
    boot: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.items if i.required) and bool(self.boot)

    def add(self, name: str, ok: bool, detail: str, required: bool = True) -> bool:
        self.items.append(Item(name, ok, detail, required))
        return ok

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.boot,
                "checks": [{"name": i.name, "ok": i.ok, "required": i.required, "detail": i.detail}
                           for i in self.items]}


LOOSE_WRITE_THROUGH = "9p-loose-write-through.patch"  # in pellucid/build/kernel-patches


def host_checks(cfg: Config, report: Report) -> bool:
    hv = cfg.hypervisor
    qemu_ok = os.access(hv.path, os.X_OK)
    version = ""
    devices = ""
    if qemu_ok:
        version = subprocess.run([hv.path, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        devices = subprocess.run([hv.path, "-device", "help"], capture_output=True, text=True).stdout
    report.add("qemu", qemu_ok, version or f"{hv.path} not found or not executable")
    if qemu_ok:
        cve = qemu_fixes.cve_2023_2861(version)
        report.add("qemu-9p-special-files", cve.fixed, cve.detail, required=False)
        abi = file_view.abi_version()
        report.add("qemu-file-view", abi >= 1, f"Landlock ABI {abi}: QEMU opens only its VM's files" if abi >= 1
                   else "no Landlock in the host kernel: QEMU may open any host file root can", required=False)
    if hv.machine == "q35":
        report.add("firmware", os.path.isfile(hv.firmware), hv.firmware)
    report.add("9p", '"virtio-9p-pci"' in devices, "virtio-9p in QEMU" if devices else "unknown")
    report.add("pmem", '"virtio-pmem-pci"' in devices, "virtio-pmem in QEMU" if devices else "unknown",
               required=hv.machine == "q35")
    kvm_error = accel.kvm_device_error()
    report.add("kvm-device", not kvm_error, kvm_error or "/dev/kvm opens", required=False)
    ksm = read_value("/sys/kernel/mm/ksm/run")
    report.add("ksm", bool(ksm), f"/sys/kernel/mm/ksm/run = {ksm}" if ksm else "no KSM in the host kernel",
               required=False)
    report.add("tun", os.path.exists("/dev/net/tun"), "/dev/net/tun", required=False)
    return qemu_ok


def template_check(cfg: Config, report: Report) -> None:
    """Whether VMs start as clones of templates, where those are, and the cgroup their builds run in."""
    hv = cfg.hypervisor
    if not hv.templates:
        report.add("templates", True, "off (hypervisor.templates = false): every VM boots cold", required=False)
        return
    from .vm import cloning, template
    try:
        where = ", ".join(cloning.template_cgroups())
    except PellucidError:
        where = "the caller's cgroup (none mounted)"
    built = len(template.list_templates(hv.template_dir))
    report.add("templates", True, f"on: VMs start as clones of templates of their size class in {hv.template_dir} "
                                  f"({built} built), built in {where}", required=False)


def check(cfg: Config, run_dir: str, refresh: bool = True) -> Report:
    report = Report()
    if not host_checks(cfg, report):
        return report
    template_check(cfg, report)
    try:
        assets = resolve(cfg)
    except PellucidError as err:
        report.add("assets", False, str(err))
        return report
    report.add("assets", True, f"kernel {assets.kernel}, image {assets.image}")
    accelerator, probe = accel.choose(cfg, assets, run_dir, refresh=refresh)
    if probe is not None:
        report.add("kvm", probe.kvm_usable, "a guest boots under KVM" if probe.kvm_usable else probe.kvm_error,
                   required=False)
    os.makedirs(run_dir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="check-", dir=run_dir)
    try:
        share_dir = os.path.join(workdir, "share")
        os.makedirs(share_dir)
        share = Share(messages.SHARE_TAG, share_dir)
        with VM(make_spec(cfg, assets, accelerator, name="pellucid-check", shares=(share,)), workdir) as vm:
            hello = vm.handshake(cfg.hypervisor.boot_timeout)
            assert vm.timeline is not None and vm.agent is not None
            fs = cfg.filesystem
            vm.agent.call(messages.MountShare(share.tag, fs.cache, fs.msize), timeout=cfg.hypervisor.boot_timeout)
            report.boot = {
                "accelerator": accelerator,
                "accelerator_forced": probe is None,
                "machine": cfg.hypervisor.machine,
                "guest_kernel": hello.kernel,
                "host_kernel": os.uname().release,
                "guest_boot_id": hello.boot_id,
                "host_boot_id": read_value("/proc/sys/kernel/random/boot_id"),
                "rootfs_dax": hello.rootfs_dax,
                "boot_ms": round(vm.timeline.agent_ms),
                "timeline_ms": {"kernel": round(vm.timeline.kernel_ms), "init": round(vm.timeline.init_ms),
                                "agent": round(vm.timeline.agent_ms)},
            }
        report.add("boot", True, f"guest {hello.kernel} answered under {accelerator} "
                                 f"in {report.boot['boot_ms']} ms")
        report.add("filesystem", True, f"9p ({FSDEV_OPTIONS}), msize={fs.msize}; rootfs cache={fs.cache}, "
                                       f"volumes cache={fs.volume_cache}"
                                       + (" (a second device)" if fs.volume_tag != share.tag else "")
                                       + ": a share mounted so in the guest")
        if "loose" in (fs.cache, fs.volume_cache):
            patched = LOOSE_WRITE_THROUGH in cache.manifest_of(assets.kernel).get("patches", [])
            report.add("9p writes", patched, "cache=loose writes through (the guest kernel has " + LOOSE_WRITE_THROUGH
                       + ")" if patched else "the guest kernel lacks " + LOOSE_WRITE_THROUGH + ": with cache=loose, "
                       "writes reach the host late, a page per request", required=False)
        if cfg.hypervisor.machine == "q35":
            report.add("dax", hello.rootfs_dax, "guest root mounted with DAX" if hello.rootfs_dax
                       else "guest root is not DAX-mounted")
    except PellucidError as err:
        report.add("boot", False, str(err))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report
