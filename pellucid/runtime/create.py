"""`create`: boot (or join) the VM and create the container in it, stopped before its user
process runs, as runc leaves it. Every step pushes its undo: a failure leaves nothing behind."""

from __future__ import annotations

import math
import os
from typing import Any, Callable

from .. import config as config_mod
from ..errors import BundleError, ContainerError, NotFound
from ..oci import bundle as oci
from ..state import Status, Store, now_rfc3339, proc_start_time
from . import guest_config, mounts, netns, network, sandbox
from .lifecycle import MiB, run_hooks, vm_dir_of
from .shims import ShimHandle, write_pid_file


def _network_namespace(config: dict[str, Any]) -> tuple[bool, str]:
    """(whether the container has a network namespace of its own, its path if the config names one)."""
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network":
            return True, ns.get("path") or ""
    return False, ""


def _uses_docker_dns(config: dict[str, Any], bundle: str) -> bool:
    """Whether the container's resolv.conf names Docker's embedded DNS server (user-defined networks)."""
    for mount in config.get("mounts") or []:
        if mount.get("destination") == "/etc/resolv.conf" and guest_config.is_bind(mount):
            source = mount.get("source", "")
            try:
                with open(source if os.path.isabs(source) else os.path.join(bundle, source)) as f:
                    return any(line.split()[:2] == ["nameserver", "127.0.0.11"] for line in f.read(65536).splitlines())
            except OSError:
                return False
    return False


def vm_size(cfg: config_mod.Config, config: dict[str, Any]) -> tuple[int, int]:
    """vCPUs and MiB for a VM: the configured defaults, plus what the OCI limits ask for."""
    resources = (config.get("linux") or {}).get("resources") or {}
    memory = cfg.hypervisor.memory_mib
    limit = (resources.get("memory") or {}).get("limit")
    if isinstance(limit, int) and limit > 0:
        memory += math.ceil(limit / MiB)
    vcpus = cfg.hypervisor.vcpus
    cpu = resources.get("cpu") or {}
    quota, period = cpu.get("quota"), cpu.get("period")
    if isinstance(quota, int) and isinstance(period, int) and quota > 0 and period > 0:
        vcpus = max(vcpus, math.ceil(quota / period))
    return min(vcpus, os.cpu_count() or 1), memory


class _Undo:
    """Rollback steps for a command that fails half-way: run in reverse, errors swallowed."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], None]] = []

    def push(self, step: Callable[[], None]) -> None:
        self.steps.append(step)

    def run(self) -> None:
        for step in reversed(self.steps):
            try:
                step()
            except Exception:
                pass


def create(store: Store, cfg: config_mod.Config, id: str, bundle: str, *, pid_file: str = "",
           console_socket: str = "", detached: bool = True) -> ShimHandle:
    """Boot (or join) the VM, create the container in it, stopped before its user process runs."""
    oci.validate_id(id)
    bundle = os.path.abspath(bundle)
    config = oci.load_config(bundle)
    rootfs = oci.rootfs_path(bundle, config)
    process = config["process"]
    terminal = bool(process.get("terminal"))
    if terminal and detached and not console_socket:
        raise ContainerError("cannot allocate tty if pellucid will detach without setting console socket")
    if console_socket and not terminal:
        raise ContainerError("cannot use console socket if pellucid will not detach or allocate tty")
    kind, sandbox_id = oci.sandbox_of(config)
    own_netns, netns_path = _network_namespace(config)
    if kind != "container" and not own_netns:
        raise BundleError(netns.HOST_NETWORK_REFUSED.format(""))
    if netns_path:
        netns.refuse_host(netns_path)  # before any hook, shim or tap
    hooks = {stage: oci.hooks_of(config, stage) for stage in ("prestart", "createRuntime", "poststart",
                                                               "poststop")}
    guest_cfg, binds = guest_config.translate(config, bundle, id, sandbox.SHARE_TAG)  # refuses before any boot
    with store.create(id, bundle=bundle, rootfs=rootfs, created=now_rfc3339(), kind=kind,
                      sandbox=sandbox_id if kind == "container" else id,
                      annotations=config.get("annotations") or {}) as st:
        undo = _Undo()
        try:
            if kind == "container":
                try:
                    parent = store.load(sandbox_id or "")
                except NotFound:
                    raise ContainerError(f"sandbox {sandbox_id} of container {id} does not exist") from None
                vm_dir = vm_dir_of(store, parent)
                netns_path = parent.extra.get("netns", "")
            else:
                vm_dir = os.path.join(store.dir(id), "vm")
                os.makedirs(vm_dir)
                if not netns_path:
                    netns_path = os.path.join(vm_dir, "netns")
                    netns.pin_new(netns_path)
                    undo.push(lambda: netns.release(netns_path))
            shim = ShimHandle(netns_path or None, console=bool(console_socket))
            undo.push(shim.abort)
            st.pid, st.pid_start = shim.pid, proc_start_time(shim.pid) or 0
            st.extra = {"netns": netns_path, "poststart": hooks["poststart"], "poststop": hooks["poststop"],
                        "terminal": terminal}
            store.save(st)
            run_hooks("prestart", hooks["prestart"], st, Status.CREATING)
            run_hooks("createRuntime", hooks["createRuntime"], st, Status.CREATING)
            timeout = cfg.hypervisor.boot_timeout + 30
            if kind != "container":
                # After the hooks: Docker's prestart hook is what moves the container's veth in.
                net = network.connect(netns_path, cfg.network.mode)
                net["dns_relay"] = _uses_docker_dns(config, bundle)
                st.extra["network"] = net
                undo.push(lambda: network.disconnect(netns_path, net["nics"]))
                vcpus, memory = vm_size(cfg, config)
                undo.push(lambda: sandbox.stop(vm_dir))
                st.extra["vm"] = sandbox.launch(vm_dir, {"id": id, "config": cfg.path, "vcpus": vcpus,
                                                         "memory_mib": memory, "netns": netns_path,
                                                         "network": net}, timeout)
            container_dir = os.path.join(sandbox.shared_dir(vm_dir), id)
            undo.push(lambda: mounts.remove_tree(container_dir))
            mounts.make_binds(container_dir, rootfs, binds)
            report = shim.send({"monitor": os.path.join(vm_dir, sandbox.MONITOR_SOCKET), "op": "create_container",
                                "args": {"id": id, "config": guest_cfg, "tty": terminal,
                                         "net_sysctls": guest_config.net_sysctls(config)},
                                "console_socket": console_socket}, timeout)
            st.extra.update(process=report["process"], guest_pid=report.get("guest_pid"))
            write_pid_file(pid_file, shim.pid)
        except BaseException:
            undo.run()
            raise
    return shim
