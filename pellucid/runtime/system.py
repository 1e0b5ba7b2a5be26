"""The real :class:`~pellucid.runtime.interfaces.Host`: each method hands over to the module that
does the work, imported when first needed (``kill`` and ``delete`` must start fast)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence

    from ..host_messages import HostCgroup, Network, Nic, VMDescription
    from .guest_config import Bind
    from .sandbox import MonitorConnection, MonitorProcess
    from .shims import ShimHandle


class SystemHost:
    def launch_vm(self, vm_dir: str, desc: VMDescription, cgroup: Sequence[str] = ()) -> MonitorProcess:
        from . import sandbox
        return sandbox.launch(vm_dir, desc, cgroup)

    def connect(self, vm_dir: str, timeout: float = 30.0) -> MonitorConnection:
        from . import sandbox
        return sandbox.connect(vm_dir, timeout)

    def stop_vm(self, vm_dir: str, monitor_pid: int, monitor_start: int, timeout: float = 10.0,
                force: bool = False) -> None:
        from . import sandbox
        sandbox.stop(vm_dir, monitor_pid, monitor_start, timeout, force)

    def start_shim(self, netns: str, console: bool, cgroup: Sequence[str] = ()) -> ShimHandle:
        from .shims import ShimHandle
        return ShimHandle(netns or None, console=console, cgroup=cgroup)

    def stop_shim(self, pid: int, start: int, grace: float = 0.0) -> None:
        from . import shims
        shims.stop(pid, start, grace)

    def make_cgroup(self, path: str, resources: dict[str, Any], overhead: HostCgroup) -> HostCgroup:
        from . import cgroups
        return cgroups.create(path, resources, overhead)

    def update_cgroup(self, cgroup: HostCgroup, resources: dict[str, Any]) -> None:
        from . import cgroups
        cgroups.apply(cgroup, resources)

    def remove_cgroup(self, cgroup: HostCgroup) -> None:
        from . import cgroups
        cgroups.remove(cgroup)

    def pin_netns(self, path: str) -> None:
        from . import netns
        netns.pin_new(path)

    def release_netns(self, path: str) -> None:
        from . import netns
        netns.release(path)

    def connect_network(self, netns: str, mode: str, owner: str) -> Network:
        from . import network
        return network.connect(netns, mode, owner)

    def disconnect_network(self, netns: str, nics: list[Nic], owner: str) -> None:
        from . import network
        network.disconnect(netns, nics, owner)

    def make_mount_points(self, rootfs: str, points: list[tuple[str, bool]]) -> None:
        from . import safe_fs
        safe_fs.make_mount_points(rootfs, points)

    def share(self, container_dir: str, rootfs: str, binds: list[Bind]) -> None:
        from . import mounts
        mounts.make_binds(container_dir, rootfs, binds)

    def unshare(self, container_dir: str) -> None:
        from . import mounts
        mounts.unshare(container_dir)

    def unmount_all(self, path: str) -> None:
        from . import mounts
        mounts.unmount_all(path)

    def run_hooks(self, stage: str, hooks: list[dict[str, Any]], state: dict[str, Any], cwd: str | None) -> None:
        from ..oci import hooks as oci_hooks
        oci_hooks.run_hooks(stage, hooks, state, cwd=cwd)
