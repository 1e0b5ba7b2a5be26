"""`create`: boot (or join) the VM and create the container in it, stopped before its user
process runs, as runc leaves it. Every step pushes its undo: a failure leaves nothing behind."""

from __future__ import annotations

import math
import os
from typing import Any, Callable

from .. import config as config_mod
from .. import ids, timeline
from .. import messages
from ..errors import BundleError, ContainerError
from ..host_messages import HostCgroup, ShimRequest, VMDescription
from ..oci import bundle as oci
from ..state import ContainerState, Status, now_rfc3339
from ..store import Store
from . import cgroups, guest_config, joins, netns, reaper
from .layout import MONITOR_SOCKET, shared_dir, vm_dir_of
from .lifecycle import MiB, run_hooks, system_host
from .shims import write_pid_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .interfaces import Host, ShimProcess


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


def _limits(config: dict[str, Any], pod: bool) -> tuple[Any, Any, Any]:
    """(memory limit in bytes, CPU quota, CPU period) asked for: a container's from its OCI
    resources; a pod's from the sandbox annotations containerd 1.7+ sets (containerd 1.6 and CRI-O
    send nothing about the pod's size: the configured default then)."""
    if pod:
        annotations = config.get("annotations") or {}

        def number(key: str) -> int | None:
            value = annotations.get(f"io.kubernetes.cri.sandbox-{key}", "")
            return int(value) if value.isdigit() else None
        return number("memory"), number("cpu-quota"), number("cpu-period")
    resources = (config.get("linux") or {}).get("resources") or {}
    cpu = resources.get("cpu") or {}
    return (resources.get("memory") or {}).get("limit"), cpu.get("quota"), cpu.get("period")


def vm_size(cfg: config_mod.Config, config: dict[str, Any], pod: bool = False) -> tuple[int, int]:
    """vCPUs and MiB for a VM: the configured defaults, plus what the OCI limits (or, for a pod
    sandbox, the pod's size) ask for."""
    limit, quota, period = _limits(config, pod)
    memory = cfg.hypervisor.memory_mib
    if isinstance(limit, int) and limit > 0:
        memory += math.ceil(limit / MiB)
    vcpus = cfg.hypervisor.vcpus
    if isinstance(quota, int) and isinstance(period, int) and quota > 0 and period > 0:
        vcpus = max(vcpus, math.ceil(quota / period))
    cpus = (((config.get("linux") or {}).get("resources") or {}).get("cpu") or {}).get("cpus")
    if isinstance(cpus, str) and cpus:
        vcpus = min(vcpus, cpu_count(cpus))  # the host cgroup's cpuset confines the VM to these
    return max(1, min(vcpus, os.cpu_count() or 1)), memory


def cpu_count(cpus: str) -> int:
    """How many CPUs a cpuset list ("0-3,8") names (a malformed one is the host cgroup's to refuse)."""
    count = 0
    for part in cpus.split(","):
        low, _, high = part.strip().partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            count += int(high or low) - int(low) + 1
    return count


def host_overhead(cfg: config_mod.Config) -> HostCgroup:
    """The VM's cost beyond its container's limits: the guest's base RAM plus the declared overhead."""
    return HostCgroup(memory_overhead=(cfg.hypervisor.memory_mib + cfg.overhead.memory_mib) * MiB,
                      cpu_millis=cfg.overhead.cpu_millis, pids=cfg.overhead.pids)


def check_fits(vm: ContainerState, config: dict[str, Any]) -> None:
    """Refuse a container joining ``vm`` whose limits ask for more than the VM has."""
    limit, quota, period = _limits(config, pod=False)
    if isinstance(limit, int) and limit > 0 and vm.vm.memory_mib and limit > vm.vm.memory_mib * MiB:
        raise ContainerError(f"the container's memory limit ({math.ceil(limit / MiB)} MiB) does not fit in the VM of "
                             f"{vm.id}, which has {vm.vm.memory_mib} MiB (size the pod for it: see the README)")
    if isinstance(quota, int) and isinstance(period, int) and quota > 0 and period > 0 and vm.vm.vcpus \
            and quota / period > vm.vm.vcpus:
        raise ContainerError(f"the container's CPU limit ({quota / period:g} CPUs) does not fit in the VM of {vm.id}, "
                             f"which has {vm.vm.vcpus} vCPUs")


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
           console_socket: str = "", detached: bool = True, systemd_cgroup: bool = False,
           host: Host | None = None) -> ShimProcess:
    """Boot (or join) the VM, create the container in it, stopped before its user process runs."""
    host = host or system_host()
    ids.check(id)
    checks = timeline.now()
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
    placement = joins.place(store, id, config, kind, sandbox_id)
    parent = placement.vm
    if parent is not None:
        kind = oci.CONTAINER
    own_netns, netns_path = _network_namespace(config)
    if kind != oci.CONTAINER and not own_netns:
        raise BundleError(netns.HOST_NETWORK_REFUSED.format(""))
    if netns_path and parent is None:  # a container that joins a VM uses that VM's, checked then
        netns.refuse_host(netns_path)  # before any hook, shim or tap
    hooks = {stage: oci.hooks_of(config, stage) for stage in ("prestart", "createRuntime", "poststart",
                                                               "poststop")}
    guest_cfg, binds = guest_config.translate(config, bundle, id, messages.SHARE_TAG,  # refuses before any boot
                                              namespace_paths=placement.guest_paths,
                                              volume_tag=cfg.filesystem.volume_tag)
    if parent is not None:
        check_fits(parent, config)
    linux = config.get("linux") or {}
    cgroup_path = cgroups.cgroup_path(linux.get("cgroupsPath") or "", id, systemd_cgroup)
    timeline.span("read the bundle, translate the config", checks)
    with store.create(id, bundle=bundle, rootfs=rootfs, created=now_rfc3339(), kind=kind,
                      sandbox=parent.id if parent is not None else id,
                      namespaces=placement.given if kind == oci.SANDBOX else {},
                      annotations=config.get("annotations") or {}) as st:
        undo = _Undo()
        try:
            monitor = None
            if parent is not None:
                vm_dir = vm_dir_of(store, parent)
                netns_path = parent.netns
                st.cgroup = HostCgroup(dirs=parent.cgroup.dirs)  # the VM's: the sandbox's to remove
            else:
                vm_dir = os.path.join(store.dir(id), "vm")
                os.mkdir(vm_dir, 0o700)
                reaper.sweep(store, host, cgroup_path)  # no reaper may remove the cgroup we are to make
                with timeline.step("host cgroup"):
                    st.cgroup = host.make_cgroup(cgroup_path, linux.get("resources") or {}, host_overhead(cfg))
                undo.push(lambda: host.remove_cgroup(st.cgroup))
                store.save(st)  # a create killed from here on leaves a cgroup that delete removes
                # The monitor first: its Python loads while the namespace, shim, hooks and network
                # are made; it waits to be told what to boot.
                with timeline.step("spawn the monitor"):
                    monitor = host.launch_vm(vm_dir, cgroup=st.cgroup.dirs)
                undo.push(lambda: host.stop_vm(vm_dir, monitor.pid, monitor.start))
                st.monitor_pid, st.monitor_start = monitor.pid, monitor.start
                store.save(st)  # from here on, a create that is killed leaves a monitor that delete finds
                if not netns_path:
                    netns_path = os.path.join(vm_dir, "netns")
                    with timeline.step("pin a network namespace"):
                        host.pin_netns(netns_path)
                    undo.push(lambda: host.release_netns(netns_path))
            with timeline.step("spawn the shim"):
                shim = host.start_shim(netns_path, console=bool(console_socket), cgroup=st.cgroup.dirs)
            undo.push(shim.abort)
            st.pid, st.pid_start = shim.pid, shim.start
            st.netns, st.terminal = netns_path, terminal
            st.poststart, st.poststop = hooks["poststart"], hooks["poststop"]
            store.save(st)
            with timeline.step("hooks"):
                run_hooks(host, "prestart", hooks["prestart"], st, Status.CREATING)
                run_hooks(host, "createRuntime", hooks["createRuntime"], st, Status.CREATING)
            # A first clone may wait for its template's build (two boot timeouts at most), then boot cold.
            timeout = cfg.hypervisor.boot_timeout * (3 if cfg.hypervisor.templates else 1) + 30
            if monitor is not None:
                # After the hooks: Docker's prestart hook is what moves the container's veth in.
                # A create killed from here on leaves taps that delete finds by the VM's names.
                undo.push(lambda: host.disconnect_network(netns_path, st.network.nics, vm_dir))
                with timeline.step("network set-up"):
                    net = host.connect_network(netns_path, cfg.network.mode, vm_dir)
                net.dns_relay = _uses_docker_dns(config, bundle)
                st.network = net
                store.save(st)
                vcpus, memory = vm_size(cfg, config, pod=kind == oci.SANDBOX)
                monitor.boot(VMDescription(id=id, config=cfg.path, vcpus=vcpus, memory_mib=memory, netns=netns_path,
                                           network=net))
            # The root and binds are shared while the VM starts (the guest mounts the share after).
            points = guest_config.mount_points(config, bundle)
            share = timeline.now()
            if points:  # a read-only root: crun could not create them through the read-only share
                host.make_mount_points(rootfs, points)
            container_dir = os.path.join(shared_dir(vm_dir), id)
            undo.push(lambda: host.unshare(container_dir))
            host.share(container_dir, rootfs, binds)
            timeline.span("share the root and binds", share)
            if monitor is not None:
                with timeline.step("wait for the VM"):
                    st.vm = monitor.wait_ready(timeout)
            request = messages.CreateContainer(id, guest_cfg, tty=terminal,
                                               net_sysctls=guest_config.net_sysctls(config))
            with timeline.step("create in the VM (through the shim)"):
                ready = shim.send(ShimRequest(monitor=os.path.join(vm_dir, MONITOR_SOCKET), op=request.OP,
                                              args=request.to_json(), console_socket=console_socket,
                                              detached=detached), timeout)
            st.process, st.guest_pid = ready.process, ready.guest_pid
            write_pid_file(pid_file, shim.pid)
        except BaseException:
            undo.run()
            raise
    return shim
