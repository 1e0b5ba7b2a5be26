"""`create`: boot (or join) the VM and create the container in it, stopped before its user
process runs, as runc leaves it. Every step pushes its undo: a failure leaves nothing behind."""

from __future__ import annotations

import math
import os
from typing import Any, Callable

from .. import config as config_mod
from .. import messages
from ..errors import BundleError, ContainerError, NotFound
from ..host_messages import ShimRequest, VMDescription
from ..oci import bundle as oci
from ..state import Status, now_rfc3339
from ..store import Store
from . import guest_config
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
           console_socket: str = "", detached: bool = True, host: Host | None = None) -> ShimProcess:
    """Boot (or join) the VM, create the container in it, stopped before its user process runs."""
    host = host or system_host()
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
    guest_cfg, binds = guest_config.translate(config, bundle, id, messages.SHARE_TAG,  # refuses before any boot
                                              volume_tag=cfg.filesystem.volume_tag)
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
                netns_path = parent.netns
            else:
                vm_dir = os.path.join(store.dir(id), "vm")
                os.makedirs(vm_dir)
                if not netns_path:
                    netns_path = os.path.join(vm_dir, "netns")
                    host.pin_netns(netns_path)
                    undo.push(lambda: host.release_netns(netns_path))
            shim = host.start_shim(netns_path, console=bool(console_socket))
            undo.push(shim.abort)
            st.pid, st.pid_start = shim.pid, shim.start
            st.netns, st.terminal = netns_path, terminal
            st.poststart, st.poststop = hooks["poststart"], hooks["poststop"]
            store.save(st)
            run_hooks(host, "prestart", hooks["prestart"], st, Status.CREATING)
            run_hooks(host, "createRuntime", hooks["createRuntime"], st, Status.CREATING)
            timeout = cfg.hypervisor.boot_timeout + 30
            if kind != "container":
                # After the hooks: Docker's prestart hook is what moves the container's veth in.
                net = host.connect_network(netns_path, cfg.network.mode)
                undo.push(lambda: host.disconnect_network(netns_path, net.nics))
                net.dns_relay = _uses_docker_dns(config, bundle)
                st.network = net
                vcpus, memory = vm_size(cfg, config)
                monitor = host.launch_vm(vm_dir, VMDescription(id=id, config=cfg.path, vcpus=vcpus, memory_mib=memory,
                                                               netns=netns_path, network=net))
                undo.push(lambda: host.stop_vm(vm_dir, monitor.pid, monitor.start))
                st.monitor_pid, st.monitor_start = monitor.pid, monitor.start
                store.save(st)  # from here on, a create that is killed leaves a monitor that delete finds
                st.vm = monitor.wait_ready(timeout)
            container_dir = os.path.join(shared_dir(vm_dir), id)
            undo.push(lambda: host.unshare(container_dir))
            host.share(container_dir, rootfs, binds)
            request = messages.CreateContainer(id, guest_cfg, tty=terminal,
                                               net_sysctls=guest_config.net_sysctls(config))
            ready = shim.send(ShimRequest(monitor=os.path.join(vm_dir, MONITOR_SOCKET), op=request.OP,
                                          args=request.to_json(), console_socket=console_socket), timeout)
            st.process, st.guest_pid = ready.process, ready.guest_pid
            write_pid_file(pid_file, shim.pid)
        except BaseException:
            undo.run()
            raise
    return shim
