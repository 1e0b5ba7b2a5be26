"""What the lifecycle verbs need from the world outside the state store, as small interfaces.

pellucid.runtime.system.SystemHost is the real thing (a VM's monitor daemon, shim processes, the
host's network namespaces, mounts and hooks); tests/fakes.py has an in-memory one, and
tests/unit/test_contracts.py runs the same checks against both so that they agree. Only tests and
type checkers import this module: the CLI's state/kill/delete path stays free of typing.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from ..host_messages import HostCgroup, Network, Nic, ShimReady, ShimRequest, VMDescription, VMInfo
from ..messages import Request
from .guest_config import Bind


class AgentConnection(Protocol):
    """A connection to a VM's monitor; its requests reach the guest agent. A context manager
    that closes the connection."""

    def call(self, request: Request, timeout: float = 30.0) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> AgentConnection: ...

    def __exit__(self, *exc: object) -> None: ...


class MonitorProcess(Protocol):
    """A VM's monitor just started: known by pid and start time before it is ready."""

    pid: int
    start: int

    def wait_ready(self, timeout: float) -> VMInfo:
        """The booted VM's info; on failure (or timeout) the monitor is stopped and VMError raised."""
        ...


class ShimProcess(Protocol):
    """A shim started (in the container's network namespace) and waiting for its request."""

    pid: int
    start: int

    def send(self, request: ShimRequest, timeout: float) -> ShimReady:
        """Hand the shim its request; its ready line once the process exists in the VM (ContainerError if not)."""
        ...

    def abort(self) -> None:
        """Stop a shim whose process could not be set up (never with a signal the workload would get)."""
        ...

    def wait(self) -> int:
        """The shim's exit status (the container process's)."""
        ...


class Host(Protocol):
    """Everything a lifecycle verb does outside the state store."""

    # A VM: its monitor daemon, which owns QEMU and the channel to the agent.
    def launch_vm(self, vm_dir: str, desc: VMDescription, cgroup: Sequence[str] = ()) -> MonitorProcess:
        """Start the monitor (in the host cgroup directories ``cgroup`` before its pid is known), which boots QEMU."""
        ...

    def connect(self, vm_dir: str, timeout: float = 30.0) -> AgentConnection: ...

    def stop_vm(self, vm_dir: str, monitor_pid: int, monitor_start: int, timeout: float = 10.0,
                force: bool = False) -> None:
        """Stop the VM's monitor (QEMU with it): politely, or with ``force`` at once. A pid of 0:
        the monitor that ``vm_dir`` has, if any."""
        ...

    # Shims: one per container process.
    def start_shim(self, netns: str, console: bool, cgroup: Sequence[str] = ()) -> ShimProcess: ...

    def stop_shim(self, pid: int, start: int, grace: float = 0.0) -> None:
        """SIGKILL the shim, after ``grace`` seconds for it to exit on its own."""
        ...

    # The VM's host cgroup (pellucid.runtime.cgroups).
    def make_cgroup(self, path: str, resources: dict[str, Any], overhead: HostCgroup) -> HostCgroup: ...

    def update_cgroup(self, cgroup: HostCgroup, resources: dict[str, Any]) -> None: ...

    def remove_cgroup(self, cgroup: HostCgroup) -> None: ...

    # The host side of a sandbox.
    def pin_netns(self, path: str) -> None: ...

    def release_netns(self, path: str) -> None: ...

    def connect_network(self, netns: str, mode: str, owner: str) -> Network:
        """Taps for the VM whose directory is ``owner`` (their names derive from it)."""
        ...

    def disconnect_network(self, netns: str, nics: list[Nic], owner: str) -> None:
        """Remove ``owner``'s taps: those in ``nics``, and any other by its names."""
        ...

    def make_mount_points(self, rootfs: str, points: list[tuple[str, bool]]) -> None:
        """Create what a read-only root lacks, inside ``rootfs`` (no symlink leads out of it)."""
        ...

    def share(self, container_dir: str, rootfs: str, binds: list[Bind]) -> None: ...

    def unshare(self, container_dir: str) -> None: ...

    def unmount_all(self, path: str) -> None: ...

    def run_hooks(self, stage: str, hooks: list[dict[str, Any]], state: dict[str, Any], cwd: str | None) -> None: ...
