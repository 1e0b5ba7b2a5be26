"""A VM's host cgroup: QEMU, the monitor and the shims of the VM's containers, confined and
accounted together at the owning container's ``linux.cgroupsPath``.

The path is taken as runc takes it: with the cgroupfs driver an absolute path is below each
hierarchy's root and a relative one below the runtime's own cgroup in that hierarchy (empty: the
container's id); with ``--systemd-cgroup`` it is ``slice:prefix:name``, placed where systemd would
put that unit (pellucid writes the cgroupfs itself, without asking systemd). cgroup v1 (one
directory per hierarchy, all joined, as runc does) and v2 (one unified directory) are both served.

The limits are the OCI limits plus the VM's declared overhead (:class:`HostCgroup`): what QEMU,
the guest kernel and the host processes cost beyond what the container asked for. The pids limit
bounds the VM's host processes and threads (the container's own pids limit applies in the guest).
"""

from __future__ import annotations

import os
import signal
import time

from ..errors import ContainerError
from ..host_messages import HostCgroup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence

ROOT = "/sys/fs/cgroup"
SELF = "/proc/self/cgroup"
#: cgroup v2 controllers a VM's cgroup gets from its parents (io is not limited: see the README)
V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids")
DEFAULT_PERIOD = 100000
SHARES_PER_CPU = 1024
REMOVE_TIMEOUT = 3.0


# Where: the path in the hierarchies, and the directories it makes.

def expand_slice(unit: str) -> str:
    """A systemd slice unit's cgroup path: ``a-b.slice`` -> ``/a.slice/a-b.slice``, ``-.slice`` -> ``/``."""
    if not unit.endswith(".slice") or "/" in unit:
        raise ContainerError(f"invalid slice name: {unit}")
    name = unit[:-len(".slice")]
    if name == "-":
        return "/"
    if not name or "--" in name or name.startswith("-") or name.endswith("-"):
        raise ContainerError(f"invalid slice name: {unit}")
    path, prefix = "", ""
    for part in name.split("-"):
        prefix += part
        path += f"/{prefix}.slice"
        prefix += "-"
    return path


def systemd_path(value: str) -> str:
    """runc's systemd form ``slice:prefix:name`` as the cgroup path systemd gives that unit: a
    scope ``prefix-name.scope`` in the slice (``system.slice`` when empty), or the slice ``name``."""
    parts = value.split(":")
    if len(parts) != 3:
        raise ContainerError(f'expected cgroupsPath to be of format "slice:prefix:name" for systemd cgroups, '
                             f'got "{value}" instead')
    slice_, prefix, name = parts
    if not name or "/" in name or "/" in prefix:
        raise ContainerError(f'invalid systemd cgroupsPath "{value}"')
    if name.endswith(".slice"):
        return expand_slice(name)
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return expand_slice(slice_ or "system.slice").rstrip("/") + "/" + unit


def cgroup_path(cgroups_path: str, container_id: str, systemd: bool) -> str:
    """The path below each hierarchy, "/..." from its root or relative to the runtime's own cgroup;
    ``..`` cannot climb out of either."""
    if systemd:
        path = systemd_path(cgroups_path or f"system.slice:pellucid:{container_id}")
        if path == "/":
            raise ContainerError(f"cgroupsPath {cgroups_path!r} names a hierarchy's root: a VM needs a cgroup "
                                 "of its own")
        return path
    path = cgroups_path or container_id
    clean = os.path.normpath("/" + path.lstrip("/"))
    if clean == "/":
        raise ContainerError(f"cgroupsPath {cgroups_path!r} names a hierarchy's root: a VM needs a cgroup of its own")
    return clean if path.startswith("/") else clean.lstrip("/")


def own_paths(text: str) -> dict[str, str]:
    """/proc/self/cgroup as hierarchy -> path: each v1 line under its controller list and under
    each controller (``name=`` dropped), the v2 line under ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        out[controllers] = path
        for c in controllers.split(","):
            out[c.removeprefix("name=")] = path
    return out


def hierarchies(root: str = ROOT) -> list[tuple[str, tuple[str, ...]]]:
    """The mounted hierarchies: (directory, its controllers); v2 is one directory with all of them."""
    if os.path.exists(f"{root}/cgroup.controllers"):
        return [(root, V2_CONTROLLERS)]
    out = []
    for name in sorted(os.listdir(root)):
        d = f"{root}/{name}"
        if not os.path.islink(d) and os.path.exists(f"{d}/cgroup.procs"):
            out.append((d, tuple(c.removeprefix("name=") for c in name.split(","))))
    if not out:
        raise ContainerError(f"no cgroup hierarchy is mounted at {root}")
    return out


def directories(path: str, root: str = ROOT, self_cgroup: str = SELF) -> list[str]:
    """The VM's cgroup directory in every hierarchy."""
    own: dict[str, str] = {}
    if not path.startswith("/"):
        with open(self_cgroup) as f:
            own = own_paths(f.read())
    dirs = []
    for d, _ in hierarchies(root):
        if path.startswith("/"):
            dirs.append(d + path)
            continue
        name = os.path.basename(d) if d != root else ""
        key = "" if name in ("unified", "") else name
        base = own.get(key, "/")
        dirs.append(os.path.normpath(f"{d}/{base}/{path}"))
    return dirs


# Limits: the OCI ones plus the VM's overhead.

def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares as cgroup v2 cpu.weight, as runc converts them."""
    return 1 + ((max(2, min(shares, 262144)) - 2) * 9999) // 262142


def host_limits(resources: dict[str, Any], cg: HostCgroup) -> dict[str, Any]:
    """What to write, by limit: memory (bytes), cpu (quota, period), shares, cpus, mems, pids; a limit
    the config does not set is absent (pids, which bounds the host processes, is always there)."""
    out: dict[str, Any] = {"pids": cg.pids} if cg.pids else {}
    memory = resources.get("memory") or {}
    limit = memory.get("limit")
    if isinstance(limit, int) and limit > 0:
        out["memory"] = limit + cg.memory_overhead
    cpu = resources.get("cpu") or {}
    quota, period = cpu.get("quota"), cpu.get("period")
    period = period if isinstance(period, int) and period > 0 else DEFAULT_PERIOD
    if isinstance(quota, int) and quota > 0:
        out["cpu"] = (quota + cg.cpu_millis * period // 1000, period)
    shares = cpu.get("shares")
    if isinstance(shares, int) and shares > 0:
        out["shares"] = shares + cg.cpu_millis * SHARES_PER_CPU // 1000
    for key in ("cpus", "mems"):
        if isinstance(cpu.get(key), str) and cpu[key]:
            out[key] = cpu[key]
    return out


def _files(limits: dict[str, Any], v2: bool) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write, in an order the kernel accepts."""
    out = []
    if "cpus" in limits:
        out.append(("cpuset", "cpuset.cpus", limits["cpus"]))
    if "mems" in limits:
        out.append(("cpuset", "cpuset.mems", limits["mems"]))
    if "memory" in limits:
        out.append(("memory", "memory.max" if v2 else "memory.limit_in_bytes", str(limits["memory"])))
    if "cpu" in limits:
        quota, period = limits["cpu"]
        if v2:
            out.append(("cpu", "cpu.max", f"{quota} {period}"))
        else:
            out += [("cpu", "cpu.cfs_period_us", str(period)), ("cpu", "cpu.cfs_quota_us", str(quota))]
    if "shares" in limits:
        out.append(("cpu", "cpu.weight", str(shares_to_weight(limits["shares"]))) if v2
                   else ("cpu", "cpu.shares", str(limits["shares"])))
    if "pids" in limits:
        out.append(("pids", "pids.max", str(limits["pids"])))
    return out


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as err:
        raise ContainerError(f"cannot set the VM's host cgroup: writing {path}: {err.strerror}") from err


def apply(cg: HostCgroup, resources: dict[str, Any], root: str = ROOT) -> None:
    """Write the limits of ``resources`` (plus the overhead) into the VM's cgroup."""
    v2 = os.path.exists(f"{root}/cgroup.controllers")
    for controller, name, value in _files(host_limits(resources, cg), v2):
        for d in cg.dirs:
            if v2 or controller in _hierarchy_of(d, root).split(","):
                _write(f"{d}/{name}", value)


def _hierarchy_of(d: str, root: str) -> str:
    """The hierarchy directory's name of a v1 cgroup directory."""
    return os.path.relpath(d, root).split("/", 1)[0]


# The life of the cgroup.

def _make(d: str, hierarchy: str, controllers: tuple[str, ...], v2: bool) -> None:
    """mkdir -p, seeding each v1 cpuset level whose CPUs or nodes are empty from its parent (as
    runc does: a level made by a plain mkdir, as some kubelets' pod cgroups, would refuse every
    process with ENOSPC) and enabling v2 controllers on the way down (a cgroup's controllers are
    those its parent delegates)."""
    rel = os.path.relpath(d, hierarchy)
    current = hierarchy
    for part in [] if rel == "." else rel.split("/"):
        if v2:
            _enable_controllers(current)
        parent, current = current, f"{current}/{part}"
        if not os.path.isdir(current):
            os.mkdir(current)
        if not v2 and "cpuset" in controllers:
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not _read(f"{current}/{name}"):
                    _write(f"{current}/{name}", _read(f"{parent}/{name}"))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _enable_controllers(d: str) -> None:
    try:
        with open(f"{d}/cgroup.controllers") as f:
            available = set(f.read().split())
        with open(f"{d}/cgroup.subtree_control") as f:
            enabled = set(f.read().split())
    except OSError:
        return
    missing = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
    if missing:
        _write(f"{d}/cgroup.subtree_control", " ".join("+" + c for c in missing))


def create(path: str, resources: dict[str, Any], cg: HostCgroup, root: str = ROOT,
           self_cgroup: str = SELF) -> HostCgroup:
    """Make the VM's cgroup at ``path`` in every hierarchy and write its limits; ``cg`` carries the
    overhead, the result also its directories. A failure removes what was made."""
    v2 = os.path.exists(f"{root}/cgroup.controllers")
    made = HostCgroup(memory_overhead=cg.memory_overhead, cpu_millis=cg.cpu_millis, pids=cg.pids)
    new = HostCgroup()
    try:
        for (hierarchy, controllers), d in zip(hierarchies(root), directories(path, root, self_cgroup)):
            if not (d == hierarchy or d.startswith(hierarchy + "/")):
                raise ContainerError(f"cgroup path {path} leaves the hierarchy at {hierarchy}")
            if not os.path.isdir(d):
                new.dirs.append(d)  # a cgroup that was there is joined, never removed on failure
            made.dirs.append(d)
            try:
                _make(d, hierarchy, controllers, v2)
            except OSError as err:
                raise ContainerError(f"cannot create the VM's host cgroup {d}: {err.strerror}") from err
        apply(made, resources, root)
    except BaseException:
        remove(new)
        raise
    return made


def join(dirs: Sequence[str]) -> None:
    """Move the calling process into ``dirs`` (run in a child before exec, so that it is there
    before anyone learns its pid, and everything it starts is there too)."""
    for d in dirs:
        with open(f"{d}/cgroup.procs", "w") as f:
            f.write("0")


def _pids(d: str) -> list[int]:
    try:
        with open(f"{d}/cgroup.procs") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def remove(cg: HostCgroup, timeout: float = REMOVE_TIMEOUT) -> None:
    """Remove the VM's cgroup directories. Its processes are the VM's (QEMU, the monitor, the shims)
    and are being stopped: wait for them, then kill what is left. Idempotent."""
    deadline = time.monotonic() + timeout
    for d in reversed(cg.dirs):
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise ContainerError(f"cannot remove the VM's host cgroup {d}: processes remain") from None
                if time.monotonic() > deadline - timeout / 2:
                    for pid in _pids(d):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                time.sleep(0.05)
