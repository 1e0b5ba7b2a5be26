"""A container's state: what the runtime remembers of it (:class:`ContainerState`, kept by
pellucid.store) and its lifecycle status, which is derived from the processes alive now.

A container's status is not taken from the file alone: :func:`status` checks its processes
(pid and start time, against pid reuse), so a VM that died or a ``create`` that was killed shows
as what it is. Which verb may run in which status is decided here (``Status.can_*``).
"""

from __future__ import annotations

import enum
import time

from .host_messages import HostCgroup, Network, VMInfo
from .procs import alive
from .records import Record

OCI_VERSION = "1.0.2"
DEFAULT_ROOT = "/run/pellucid"
KINDS = ("single", "sandbox", "container")


class Status(enum.Enum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"

    def can_start(self) -> bool:
        return self is Status.CREATED

    def can_kill(self) -> bool:
        return self in (Status.CREATED, Status.RUNNING, Status.PAUSED)

    def can_delete(self) -> bool:
        """Without --force: a container whose process has not started, or has exited."""
        return self in (Status.CREATED, Status.STOPPED)

    def can_pause(self) -> bool:
        return self in (Status.CREATED, Status.RUNNING)

    def can_resume(self) -> bool:
        return self is Status.PAUSED

    def can_exec(self) -> bool:
        return self in (Status.CREATED, Status.RUNNING)

    def can_inspect(self) -> bool:
        """ps, events and update: the container exists in its VM."""
        return self in (Status.CREATED, Status.RUNNING, Status.PAUSED)


class ContainerState(Record):
    """What the runtime remembers of one container; ``status`` is derived, never stored.

    - ``pid``/``pid_start``: the shim standing for the container's init (its pid and start time,
      pellucid.procs); 0 when there is none yet, or unknown. The runtime stops it through these.
    - ``started``: ``start`` has run. ``paused``: ``pause`` has run and ``resume`` not since.
    - ``sandbox``: id of the container that owns the VM the container lives in (its own by default).
    - ``kind``: "single" (one VM per container), "sandbox" (a pod's VM) or "container" (in another's
      VM: its pod's, or that of the container whose namespaces it joined; pellucid.runtime.joins).
    - ``creator_pid``/``creator_start``: the ``create`` command while status is creating, else 0.
    - ``netns``: the network namespace the VM and the shims run in; ``network``: how the VM is
      connected to it (the sandbox's own; empty for a container in a pod).
    - ``poststart``/``poststop``: the OCI hooks to run after start and after delete.
    - ``terminal``: the init process has a terminal.
    - ``vm``: the VM's info (sandbox and single containers); ``monitor_pid``/``monitor_start``:
      its monitor daemon, which owns QEMU.
    - ``process``/``guest_pid``: the init process's number with the agent and its pid in the guest.
    - ``retired``: deleted, but the state stays to hold its VM while containers that joined its
      namespaces live (the last of them to go stops the VM and removes it: design.md "VM lifetime").
    - ``namespaces``: a pod sandbox's namespace paths as its config named them (CRI-O's pinned
      namespaces, which its containers name again to join the sandbox's: pellucid.runtime.joins).
    - ``cgroup``: the VM's host cgroup, which holds the shims (of a container that joined a VM: the
      VM owner's, which removes it).
    """

    FIELDS = {
        "id": str, "bundle": str, "rootfs": str, "created": str, "owner": str, "annotations": dict,
        "pid": int, "pid_start": int, "started": bool, "paused": bool, "sandbox": str, "kind": str,
        "creator_pid": int, "creator_start": int, "netns": str, "network": Network, "poststart": list,
        "poststop": list, "terminal": bool, "vm": VMInfo, "monitor_pid": int, "monitor_start": int,
        "process": int, "guest_pid": int, "cgroup": HostCgroup, "namespaces": dict,
        "retired": bool,
    }
    REQUIRED = ("id",)
    __slots__ = tuple(FIELDS)

    def __init__(self, id: str, **fields: object) -> None:
        fields.setdefault("kind", "single")
        super().__init__(id=id, **fields)

    def _check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"container kind {self.kind!r} is not one of {', '.join(KINDS)}")
        self.sandbox = self.sandbox or self.id


def status(state: ContainerState) -> Status:
    """The container's status, from the processes alive now rather than from the file alone."""
    if state.creator_pid:
        if alive(state.creator_pid, state.creator_start):
            return Status.CREATING
        if not state.pid:
            return Status.STOPPED  # create was killed before it had a process to show
    if state.pid > 0 and alive(state.pid, state.pid_start):
        if state.paused:
            return Status.PAUSED
        return Status.RUNNING if state.started else Status.CREATED
    return Status.STOPPED


def now_rfc3339() -> str:
    """UTC now as Go's RFC3339Nano prints it (what runc shows): nanoseconds, trailing zeros
    dropped, e.g. "2024-05-01T12:34:56.123456789Z"."""
    secs, nanos = divmod(time.time_ns(), 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if nanos:
        stamp += "." + f"{nanos:09d}".rstrip("0")
    return stamp + "Z"


def oci_state(state: ContainerState, status: Status) -> dict:
    """The object ``pellucid state`` prints, as ``runc state`` does."""
    out = {
        "ociVersion": OCI_VERSION,
        "id": state.id,
        "pid": 0 if status is Status.STOPPED else state.pid,
        "status": status.value,
        "bundle": state.bundle,
        "rootfs": state.rootfs,
        "created": state.created,
        "owner": state.owner,
    }
    if state.annotations:
        out["annotations"] = state.annotations
    return out
