"""The host's own tools copied into a test rootfs, with the shared libraries they load.

Used by the e2e tests (a bundle's rootfs) and the CRI tests (an image's layer) to run what pods
commonly run in their network namespace, iptables, without a package manager or a registry.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

#: the multi-call binaries Debian's iptables package installs, in the order Debian prefers them
IPTABLES_BACKENDS = {"nft": "/usr/sbin/xtables-nft-multi", "legacy": "/usr/sbin/xtables-legacy-multi"}


def shared_libraries(elf: str) -> set[str]:
    """The shared objects ``elf`` loads, the dynamic loader included, as paths on this host."""
    out = subprocess.run(["ldd", elf], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"(/\S+) \(0x", out))


def copy_into(rootfs: Path, path: str) -> None:
    """``path`` (its content, symlinks followed) at the same place in ``rootfs``."""
    dest = rootfs / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(path), dest)


def add_iptables(rootfs: Path) -> list[str]:
    """Debian's iptables in ``rootfs``: the multi-call binaries found on the host, their extensions
    and libraries, the names ``iptables-nft``/``-legacy`` (and ``ip6tables-``) for each, and plain
    ``iptables``/``ip6tables`` for the first (nft where present, as Debian's default). Returns the
    backends found; none when the host has no iptables."""
    backends = [name for name, path in IPTABLES_BACKENDS.items() if os.access(path, os.X_OK)]
    if not backends:
        return []
    libxtables = next(lib for lib in shared_libraries(IPTABLES_BACKENDS[backends[0]]) if "/libxtables." in lib)
    extensions = Path(os.path.realpath(libxtables)).parent / "xtables"  # dlopen()ed, by absolute path
    elves = [IPTABLES_BACKENDS[b] for b in backends] + [str(p) for p in sorted(extensions.glob("*.so"))]
    for path in set(elves) | set().union(*(shared_libraries(e) for e in elves)):
        copy_into(rootfs, path)
    for backend in backends:
        multi = os.path.basename(IPTABLES_BACKENDS[backend])
        for family in ("iptables", "ip6tables"):
            (rootfs / f"usr/sbin/{family}-{backend}").symlink_to(multi)
            if backend == backends[0]:
                (rootfs / f"usr/sbin/{family}").symlink_to(multi)
    return backends
