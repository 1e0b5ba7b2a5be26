"""Which VM a new container runs in, and which guest namespaces it joins.

A namespace path ``/proc/<pid>/ns/<type>`` whose pid is a pellucid container's shim (Docker's
``--network container:X``, containerd's CRI for every container of a pod) names that container's
namespace, which lives in its VM: the new container joins that VM, and crun in the guest joins
``/proc/<guest pid of that container's init>/ns/<type>``. CRI-O names a pod's namespaces by
pinned files instead (``/var/run/ipcns/...``): the sandbox records the paths it was given, and a
container of the pod naming the same path joins the sandbox's. The network namespace is the VM's
own, shared by all its containers. Any other path names a host namespace: a VM cannot join it.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from .. import log
from ..errors import BundleError, ContainerError, NotFound
from ..oci import bundle as oci
from ..procs import alive
from ..state import ContainerState
from ..store import Store

#: namespace types a container may share with another of its VM, and their /proc/<pid>/ns names
JOINABLE = {"network": "net", "pid": "pid", "ipc": "ipc", "uts": "uts"}
_PROC_NS = re.compile(r"/proc/([1-9][0-9]{0,9})/ns/([a-z]+)")


class Placement(NamedTuple):
    """``vm``: the state of the container that owns the VM to join (None: boot a new one);
    ``guest_paths``: namespace type -> guest path for the config translation ("": a new namespace
    in the VM for the one the host pinned); ``given``: the
    namespace paths the config named (recorded by a sandbox for its pod's containers)."""

    vm: ContainerState | None
    guest_paths: dict[str, str]
    given: dict[str, str]


def _shim_owner(states: list[ContainerState], pid: int) -> ContainerState | None:
    """The live pellucid container whose shim (its init's stand-in on the host) is ``pid``."""
    for st in states:
        if st.pid == pid and st.guest_pid and not st.retired and alive(st.pid, st.pid_start):
            return st
    return None


def place(store: Store, id: str, config: dict[str, Any], kind: str, sandbox_id: str | None) -> Placement:
    """Where container ``id``, described by ``config``, runs; BundleError/ContainerError if nowhere."""
    given = {ns["type"]: ns["path"] for ns in (config.get("linux") or {}).get("namespaces") or []
             if ns.get("path")}
    sandbox = None
    if kind == oci.CONTAINER:
        try:
            sandbox = store.load(sandbox_id or "")
        except NotFound:
            raise ContainerError(f"sandbox {sandbox_id} of container {id} does not exist") from None
    states: list[ContainerState] | None = None
    vm: ContainerState | None = None
    guest_paths: dict[str, str] = {}
    shares_network = False
    for kind_, path in given.items():
        match = _PROC_NS.fullmatch(path)
        owner = None
        if match and JOINABLE.get(kind_) == match.group(2):
            if states is None:
                states = store.list()
            owner = _shim_owner(states, int(match.group(1)))
        if owner is None:
            if sandbox is not None and sandbox.namespaces.get(kind_) == path:
                owner = sandbox  # CRI-O: the pod's pinned namespace, which the sandbox was given
            elif kind_ == "network":
                continue  # the VM's network namespace on the host (checked by the caller)
            elif kind == oci.SANDBOX and kind_ in JOINABLE:
                guest_paths[kind_] = ""  # CRI-O pins a pod's namespaces: the sandbox's are new ones in its VM
                continue
            else:
                raise BundleError(f"cannot join {kind_} namespace {path}: it belongs to no pellucid container, "
                                  "and a container in a VM cannot join a host namespace")
        if kind_ not in JOINABLE:
            raise BundleError(f"cannot join {kind_} namespace {path}: only the network, pid, ipc and uts "
                              "namespaces of another container can be joined")
        if vm is not None and owner.sandbox != vm.sandbox:
            raise BundleError(f"cannot join {kind_} namespace {path}: it is in the VM of {owner.sandbox}, "
                              f"and the container's other namespaces are in the VM of {vm.sandbox}")
        if sandbox is not None and owner.sandbox != sandbox.id:
            raise BundleError(f"cannot join {kind_} namespace {path}: it is not in the VM of pod sandbox {sandbox.id}")
        if vm is None:
            vm = owner if owner.sandbox == owner.id else store.load(owner.sandbox)
        if kind_ == "network":
            shares_network = True
        else:
            guest_paths[kind_] = f"/proc/{owner.guest_pid}/ns/{JOINABLE[kind_]}"
    if kind == oci.SANDBOX and vm is not None:
        raise BundleError(f"a pod sandbox cannot join the namespaces of container {vm.id}: it starts a VM of its own")
    if sandbox is not None:
        vm = sandbox
    elif vm is not None and not shares_network:
        log.warning(f"the container joins the VM of {vm.id}, whose network it shares: a VM has one network stack")
    return Placement(vm, guest_paths, given)
