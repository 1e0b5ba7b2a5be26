"""What a container's VM costs the host (``pellucid stats``): the PSS of every host process of
the VM (QEMU, its monitor, the shims of its containers' processes), QEMU's PSS by kind (guest RAM
this VM wrote, its share of the template's pages, of the root image and of the kernel a cold
boot keeps mapped, TCG's code cache, QEMU itself; a clone's kernel is in the template's pages), the guest's own view of the container's memory (``events --stats``'s source), and the
template's pages that are resident on the host but mapped by no process, which appear in no
process's PSS: with them counted once, the figures add up to what the host spends.

PSS divides each page among the processes that map it, so the PSS of all pellucid's processes
plus the unmapped template pages is the host's memory for them (page cache of the root image
that no VM maps aside: it is reclaimable).
"""

from __future__ import annotations

import os

from ..errors import ContainerError
from ..procfs import Mapping, Proc, cgroup_procs
from ..store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..state import ContainerState
    from .interfaces import Host

RAM_BACKEND, IMAGE_BACKEND = "ram0", "rootmem"  # the memory-backend-file ids of pellucid.vm.qemu_args


def backend_paths(qemu_argv: list[str]) -> dict[str, str]:
    """``mem-path`` of each ``-object memory-backend-file`` on QEMU's command line, by id."""
    paths = {}
    for flag, value in zip(qemu_argv, qemu_argv[1:]):
        if flag != "-object" or not value.startswith("memory-backend-file,"):
            continue
        props = dict(p.partition("=")[::2] for p in value.split(",")[1:])
        if props.get("id") and props.get("mem-path"):
            paths[props["id"]] = props["mem-path"]
    return paths


def kernel_path(qemu_argv: list[str]) -> str:
    """The guest kernel QEMU loaded (``-kernel``): a cold boot keeps it mapped, shared between VMs."""
    return next((value for flag, value in zip(qemu_argv, qemu_argv[1:]) if flag == "-kernel"), "")


def _vm_processes(proc: Proc, store: Store, owner: ContainerState) -> list[dict[str, Any]]:
    """Every live host process of ``owner``'s VM, with its role: the monitor, QEMU (the monitor's
    child), each container's init shim, and whatever else is in the VM's host cgroup (exec shims)."""
    found: dict[int, dict[str, Any]] = {}

    def add(pid: int, role: str, container: str = "") -> None:
        if pid > 0 and pid not in found:
            found[pid] = {"pid": pid, "role": role, "container": container}

    monitor_stat = proc.stat(owner.monitor_pid)
    monitor = owner.monitor_pid if monitor_stat and monitor_stat[1] == owner.monitor_start else 0
    add(monitor, "monitor")
    qemu_stat = proc.stat(owner.vm.qemu_pid)
    if monitor and qemu_stat and qemu_stat[0] == monitor:  # QEMU is the monitor's child: not a reused pid
        add(owner.vm.qemu_pid, "qemu")
    for st in store.list():
        shim_stat = proc.stat(st.pid)
        if (st.sandbox or st.id) == owner.id and shim_stat and shim_stat[1] == st.pid_start:
            add(st.pid, "shim", st.id)
    for pid in cgroup_procs(owner.cgroup.dirs[0]) if owner.cgroup.dirs else []:
        argv = proc.cmdline(pid)
        add(pid, "shim" if "pellucid.shim" in argv else "other", "exec" if "pellucid.shim" in argv else "")
    return sorted(found.values(), key=lambda p: ("qemu", "monitor", "shim", "other").index(p["role"]))


def _kinds(maps: list[Mapping], rollup: dict[str, int], ram: str, image: str, kernel: str,
           memory: int) -> dict[str, int]:
    """QEMU's PSS by kind, in bytes; "qemu" is the rest (its own heap, libraries, device state)."""
    kinds = {"guest_ram": 0, "template": 0, "root_image": 0, "kernel": 0, "code_cache": 0}
    rss = {"template": 0, "root_image": 0}
    for m in maps:
        if ram and m.path == ram:
            # A private mapping of the template's file: its tmpfs pages (QEMU's only shmem mapping,
            # so smaps_rollup's Pss_Shmem is exactly their share) and its copy-on-write pages.
            kinds["template"] = rollup.get("Pss_Shmem", 0)
            kinds["guest_ram"] = max(0, m.get("Pss") - kinds["template"])
            rss["template"] = max(0, m.get("Rss") - m.get("Anonymous"))
        elif image and m.path == image:
            kinds["root_image"] += m.get("Pss")
            rss["root_image"] += m.get("Rss")
        elif kernel and m.path == kernel:
            kinds["kernel"] += m.get("Pss")
        elif not m.path and not ram and m.size == memory:
            kinds["guest_ram"] += m.get("Pss")  # a cold boot's anonymous guest RAM
        elif not m.path and "x" in m.perms:
            kinds["code_cache"] += m.get("Pss")  # TCG's translated code (none under KVM)
    kinds["qemu"] = max(0, rollup.get("Pss", 0) - sum(kinds.values()))
    return {**kinds, "template_rss": rss["template"], "root_image_rss": rss["root_image"]}


def template_residency(proc: Proc, ram: str) -> dict[str, Any]:
    """The template's RAM file: bytes resident (tmpfs), the share of it every process mapping it
    has (their Pss_Shmem: a clone maps no other tmpfs file), and so the part mapped by none."""
    try:
        resident = os.stat(ram).st_blocks * 512
    except OSError:
        return {"path": ram, "error": "the template's RAM file is gone (removed or rebuilt since the VM started)"}
    mapped, mappers = 0, 0
    for pid in proc.pids():
        if ram in proc.maps_paths(pid):
            mappers += 1
            mapped += (proc.rollup(pid) or {}).get("Pss_Shmem", 0)
    return {"path": ram, "resident": resident, "mapped": mapped, "unmapped": max(0, resident - mapped),
            "mappers": mappers}


def cost(store: Store, id: str, host: Host | None = None, proc: Proc | None = None) -> dict[str, Any]:
    """What container ``id``'s VM costs the host, and what the guest sees of the container. Sizes
    in bytes."""
    from .lifecycle import refresh, stats
    proc = proc or Proc()
    st, now = refresh(store, id)
    if not now.can_inspect():
        raise ContainerError("container not running")
    owner = store.load(st.sandbox) if st.sandbox else st  # a retired sandbox still holds the VM
    processes = _vm_processes(proc, store, owner)
    rollups = {p["pid"]: proc.rollup(p["pid"]) or {} for p in processes}  # one read each: the kinds add up
    for p in processes:
        p["pss"], p["rss"] = rollups[p["pid"]].get("Pss", 0), rollups[p["pid"]].get("Rss", 0)
    qemu = next((p for p in processes if p["role"] == "qemu"), None)
    if qemu is None:
        raise ContainerError("container not running: its VM is gone or stopping")
    argv = proc.cmdline(qemu["pid"])
    backends = backend_paths(argv)
    ram, image = backends.get(RAM_BACKEND, ""), backends.get(IMAGE_BACKEND, "")
    kinds = _kinds(proc.mappings(qemu["pid"]), rollups[qemu["pid"]], ram, image, kernel_path(argv),
                   owner.vm.memory_mib << 20)
    return {
        "id": id, "vm": {"owner": owner.id, "qemu_pid": qemu["pid"], "accelerator": owner.vm.accelerator,
                         "vcpus": owner.vm.vcpus, "memory_mib": owner.vm.memory_mib, "template": owner.vm.template},
        "processes": processes, "total_pss": sum(p["pss"] for p in processes), "qemu": kinds,
        "template": template_residency(proc, ram) if ram else None,
        "guest": stats(store, id, host),
    }
