"""The guest's side of VM templates: what the template does before it is saved, and what each clone
does first when it resumes from it.

A clone resumes with the template's memory: the kernel and the agent carry on from the instant of
the save. What the clones share, and what this module makes their own:

- The kernel's CRNG state (base key, per-CPU keys, the input pool): shared until reseeded, so two
  clones would read the same /dev/urandom and getrandom() bytes. ``resumed`` mixes host-provided
  bytes into the input pool (RNDADDENTROPY) and forces a reseed (RNDRESEEDCRNG) before anything
  else runs. (vmgenid would do this in the kernel, but qboot does not run the ACPI linker command
  it needs.)
- The boot id (/proc/sys/kernel/random/boot_id): generated at its first read, so the template never
  reads it (``hello`` with ``template``) and each clone reads it after the reseed: unique per clone.
- Python's ``random`` module: seeded at import, so reseeded here; ``tempfile``'s name sequence too.
- The wall clock: the template's, set from the host's time.
- NIC MACs: virtio-net migrates the MAC, so a clone's NICs carry the template's slot MACs until the
  agent gives them the container's (``nics``), before the network is configured.

Shared and left so (derived once at boot, not secret across VMs of one host, or not changeable
without a reboot):

- KASLR offsets: none to share. qboot enters an uncompressed vmlinux through PVH, which skips the
  decompressor where KASLR runs, so every VM, cloned or cold-booted, has the same layout.
- Stack canaries of the tasks alive in the template (PID 1, kernel threads) and the kernel's boot-time
  hash keys (siphash keys of the network stack's hashtables, the slab freelist random, ...):
  shared by all clones of one template. New tasks get canaries from the reseeded CRNG.
- Python's str/bytes hash seed of the agent: fixed for the life of the interpreter, so shared. The
  agent keys its dicts by ids the host chooses, not by what containers send.
- Everything in the template's page cache and the agent's heap: nothing secret is there (the
  template never runs a container, never sees a container's config or a network address).
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import time

from .. import messages
from .agent import Agent, AgentError, read_boot_id

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
SYS_NET = "/sys/class/net"


def warm_up() -> None:
    """Import now what the agent would import on first use, so that every clone has it in memory."""
    import binascii  # noqa: F401  (bytes fields: clone_resumed's entropy, the DNS relay)
    import random  # noqa: F401  (seeded at import: reseeded in each clone)
    import socket  # noqa: F401  (addresses are checked with inet_pton)
    from . import dns, netlink, network  # noqa: F401


def reseed(entropy: bytes) -> None:
    """Mix the host's bytes into the kernel's input pool and make the CRNG rekey from it now."""
    fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
    random = sys.modules.get("random")
    if random is not None:
        random.seed()  # from os.urandom, which now draws from the reseeded CRNG
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile._name_sequence = None  # type: ignore[attr-defined]  # made again, seeded afresh, on next use


def _set_macs(nics: list[messages.NicSlot]) -> None:
    """Give each NIC in a template's slot (found by the slot's MAC) the container's MAC."""
    from .netlink import Netlink
    by_mac = {}
    for name in os.listdir(SYS_NET):
        try:
            with open(f"{SYS_NET}/{name}/address") as f:
                mac = f.read().strip().lower()
            with open(f"{SYS_NET}/{name}/ifindex") as f:
                by_mac[mac] = int(f.read())
        except (OSError, ValueError):
            continue
    missing = [nic.slot_mac for nic in nics if nic.slot_mac.lower() not in by_mac]
    if missing:
        raise AgentError(messages.ERR_NOT_FOUND, f"no NIC slot with MAC {missing[0]} in the VM")
    nl = Netlink()
    try:
        for nic in nics:
            nl.set_link(by_mac[nic.slot_mac.lower()], mac=bytes.fromhex(nic.mac.replace(":", "")))
    except OSError as err:
        raise AgentError(messages.ERR_NETWORK, f"setting a NIC's MAC: {err}") from None
    finally:
        nl.close()


def resumed(agent: Agent, request: messages.CloneResumed) -> messages.HelloResult:
    """The first request a clone serves: reseed, clock, MACs; then the clone's own boot id."""
    reseed(request.entropy)
    time.clock_settime_ns(time.CLOCK_REALTIME, request.time_ns)
    _set_macs(request.nics)
    return agent.hello_result(boot_id=read_boot_id())
