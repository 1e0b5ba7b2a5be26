"""VM size classes: the few VM shapes templates are built for, so that most containers start as a
clone. A VM asked for (memory, vCPUs) by the OCI limits runs as the smallest class at least that big;
beyond the largest class it boots cold at its exact size.

Rounding up costs the host little: a clone's RAM is the template's file mapped copy-on-write, so
only pages the guest writes are its own, and the container's own memory limit is enforced inside
the guest by its cgroup. Memory classes double (each step at most doubles a VM's RAM); vCPU
classes are capped by the host's CPUs, as ``vm_size`` caps the request.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMORY_MIB = (256, 512, 1024, 2048, 4096, 8192)
VCPUS = (1, 2, 4, 8)


@dataclass(frozen=True, order=True)
class SizeClass:
    memory_mib: int
    vcpus: int

    @property
    def name(self) -> str:
        return f"{self.memory_mib}m{self.vcpus}c"


def vcpu_classes(host_cpus: int) -> tuple[int, ...]:
    """The vCPU classes on a host: those below its CPU count, and its count (capped) as the largest."""
    top = min(max(host_cpus, 1), VCPUS[-1])
    return tuple(c for c in VCPUS if c < top) + (top,)


def size_class(memory_mib: int, vcpus: int, host_cpus: int) -> SizeClass | None:
    """The smallest class that holds the request, or None if none does (the VM then boots cold)."""
    if memory_mib <= 0 or vcpus <= 0:
        raise ValueError(f"invalid VM size {memory_mib} MiB, {vcpus} vCPUs")
    memory = next((m for m in MEMORY_MIB if m >= memory_mib), None)
    cpus = next((c for c in vcpu_classes(host_cpus) if c >= vcpus), None)
    if memory is None or cpus is None:
        return None
    return SizeClass(memory, cpus)
