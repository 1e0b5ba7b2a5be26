"""The Kubernetes RuntimeClass for the `pellucid` handler, with the pod overhead a VM adds.

Kubernetes adds `overhead.podFixed` to a pod's requests (scheduling) and to its cgroup limits.
pellucid sizes a pod's VM as the base size (hypervisor.memory_mib, hypervisor.vcpus) plus what the
containers' limits ask, and puts QEMU, the monitor and the shims in the pod's cgroup, so the
overhead is what the pod's cgroup holds beyond its containers' limits:

- memory: the base guest RAM (the guest kernel and agent may touch all of it), plus the host side
  of a VM: QEMU outside guest RAM, the monitor and the sandbox's shim (57 MiB PSS measured with
  `bench/mem`; HOST_MIB rounds it up), plus, under TCG, QEMU's translated-code cache (68-70 MiB
  measured after a container start; it grows with the code the guest runs).
- cpu: the base vCPUs run the guest kernel and agent, not the workload, and QEMU's main loop, the
  monitor and the shims wake beside them on I/O: CPU_MILLIS_PER_BASE_VCPU for each base vCPU.
"""

from __future__ import annotations

from ..config import Config
from . import RUNTIME_NAME

HOST_MIB = 64
TCG_CACHE_MIB = 128
CPU_MILLIS_PER_BASE_VCPU = 250


def overhead(cfg: Config, tcg: bool) -> tuple[int, int]:
    """(cpu in millicores, memory in MiB) a pod's VM costs beyond its containers' limits."""
    hv = cfg.hypervisor
    return hv.vcpus * CPU_MILLIS_PER_BASE_VCPU, hv.memory_mib + HOST_MIB + (TCG_CACHE_MIB if tcg else 0)


def uses_tcg(cfg: Config) -> tuple[bool, str]:
    """Whether VMs run under TCG here, and how that was found (the forced accelerator, the cached
    probe, or TCG assumed: a limit too high wastes room, one too low gets pods OOM-killed)."""
    accelerator = cfg.hypervisor.accelerator
    if accelerator != "auto":
        return accelerator == "tcg", f"hypervisor.accelerator = {accelerator}"
    from ..errors import PellucidError
    from ..vm import accel
    from ..vm.assets import resolve
    try:
        probe = accel.cached(cfg, resolve(cfg))
    except PellucidError:
        probe = None
    if probe is None:
        return True, "no accelerator probe cached (`pellucid check` makes one): TCG assumed"
    return probe.accelerator == "tcg", f"accelerator probed: {probe.accelerator}"


def manifest(cpu_millis: int, memory_mib: int, comment: str = "") -> str:
    lines = [f"# {line}" for line in comment.splitlines()] + [
        "apiVersion: node.k8s.io/v1",
        "kind: RuntimeClass",
        "metadata:",
        f"  name: {RUNTIME_NAME}",
        f"handler: {RUNTIME_NAME}",
        "overhead:",
        "  podFixed:",
        f'    cpu: "{cpu_millis}m"',
        f'    memory: "{memory_mib}Mi"',
    ]
    return "\n".join(lines) + "\n"
