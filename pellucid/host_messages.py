"""What the host's own processes hand each other: the runtime, a VM's monitor and the shims.

    runtime -> monitor   VMDescription, written as VM_DIR/vm.json before the monitor starts
    monitor -> runtime   MonitorReady, one JSON line on the ready pipe once the agent answers
    runtime -> shim      ShimRequest, JSON on the request pipe once the VM is up
    shim -> runtime      ShimReady, one JSON line on the ready pipe once the process exists

None of this crosses into the guest (pellucid.protocol is that contract). A network interface is
described once (:class:`Nic`): pellucid.runtime.network makes it, the state keeps it, vm.json
carries it to the monitor, which gives QEMU its tap and the agent its addresses.
"""

from __future__ import annotations

from .records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import messages


class Address(Record):
    FIELDS = {"family": int, "address": str, "prefixlen": int}
    __slots__ = tuple(FIELDS)


class Route(Record):
    """A route of the namespace's main table that the guest must have too."""

    FIELDS = {"family": int, "dst": str, "dst_len": int, "gateway": str, "scope": int, "device": str}
    __slots__ = tuple(FIELDS)


class Nic(Record):
    """An interface of the container's network namespace and the tap (or macvtap: then ``device``
    is its /dev/tapN) that joins it to the VM; ``ingress``: pellucid added the interface's ingress
    qdisc (to redirect its traffic to the tap), so removes it at the end."""

    FIELDS = {"name": str, "index": int, "mac": str, "mtu": int, "addresses": [Address], "tap": str,
              "device": str, "ingress": bool}
    __slots__ = tuple(FIELDS)

    def for_guest(self) -> dict:
        """What the agent needs to configure the guest's side of the interface."""
        return {"name": self.name, "mac": self.mac, "mtu": self.mtu,
                "addresses": [a.to_dict() for a in self.addresses]}


class Network(Record):
    """How a VM is connected: its interfaces, the routes, whether the guest relays DNS to Docker's."""

    FIELDS = {"nics": [Nic], "routes": [Route], "dns_relay": bool}
    __slots__ = tuple(FIELDS)

    def for_guest(self) -> messages.ConfigureNetwork:
        """The request that gives the guest this network (checked as the agent will check it)."""
        from . import messages  # the monitor's concern: not on the CLI's path that loads states
        return messages.ConfigureNetwork.from_json({
            "nics": [n.for_guest() for n in self.nics], "routes": [r.to_dict() for r in self.routes],
            "dns_relay": self.dns_relay})


# A monitor starts before its VM is described (pellucid.runtime.sandbox): this line on its go pipe
# says that vm.json is written.
MONITOR_GO = b"go\n"


class Share(Record):
    """A host directory exported to the guest over 9p under ``tag``."""

    FIELDS = {"tag": str, "path": str}
    __slots__ = tuple(FIELDS)


class VMDescription(Record):
    """What a monitor boots (VM_DIR/vm.json). ``config``: the runtime configuration file ("" for
    the default); ``netns``: the network namespace QEMU runs in."""

    FIELDS = {"id": str, "config": str, "vcpus": int, "memory_mib": int, "netns": str, "network": Network,
              "shares": [Share]}
    REQUIRED = ("id",)
    __slots__ = tuple(FIELDS)


class HostCgroup(Record):
    """A VM's host cgroup (pellucid.runtime.cgroups): its directory in each hierarchy, and the
    overhead added to the OCI limits there (``memory_overhead`` in bytes, ``cpu_millis`` in
    thousandths of a CPU, ``pids`` the bound on the VM's host processes and threads)."""

    FIELDS = {"dirs": list, "memory_overhead": int, "cpu_millis": int, "pids": int}
    __slots__ = tuple(FIELDS)


class VMInfo(Record):
    """A booted VM, as its monitor reports it (and the container's state keeps it); ``template``: the
    key of the template it is a clone of ("" for a cold boot)."""

    FIELDS = {"accelerator": str, "machine": str, "guest_kernel": str, "boot_id": str, "rootfs_dax": bool,
              "boot_ms": int, "qemu_pid": int, "vcpus": int, "memory_mib": int, "template": str,
              "share_cache": str, "volume_cache": str}
    __slots__ = tuple(FIELDS)


class MonitorReady(Record):
    """The monitor's ready line: the VM's info, or why it did not come up."""

    FIELDS = {"ok": bool, "error": str, "info": VMInfo}
    REQUIRED = ("ok",)
    __slots__ = tuple(FIELDS)


class MonitorHandoff(Record):
    """What the booting monitor hands the serving one it execs into (pellucid.monitor): the open
    descriptors it inherits, QEMU's pid and start time, and the bytes already read from the agent
    and from QMP that are not yet a whole message (hex). ``qmp_ready``: capabilities negotiated."""

    FIELDS = {"qemu_pid": int, "qemu_start": int, "agent_fd": int, "qmp_fd": int, "listener_fd": int,
              "agent_pending": str, "qmp_pending": str, "qmp_ready": bool}
    REQUIRED = ("qemu_pid", "qemu_start", "agent_fd", "qmp_fd", "listener_fd")
    __slots__ = tuple(FIELDS)

    def _check(self) -> None:
        for name in ("agent_pending", "qmp_pending"):
            try:
                bytes.fromhex(getattr(self, name))
            except ValueError:
                raise ValueError(f"field {name!r} is not hex") from None


class ShimRequest(Record):
    """What a shim is to do: send ``op`` (create_container or exec_process) with ``args`` to the
    monitor at ``monitor``, then relay; with ``console_socket``, its terminal's master goes there.
    ``detached``: the command that started it returns without waiting for it."""

    FIELDS = {"monitor": str, "op": str, "args": dict, "console_socket": str, "detached": bool}
    REQUIRED = ("monitor", "op", "args")
    __slots__ = tuple(FIELDS)


class ShimReady(Record):
    """The shim's ready line: the process exists in the VM (its number with the agent and its
    pid in the guest), or why it could not be started."""

    FIELDS = {"ok": bool, "error": str, "process": int, "guest_pid": int}
    REQUIRED = ("ok",)
    __slots__ = tuple(FIELDS)
