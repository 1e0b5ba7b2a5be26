"""Host bind mounts that carry a container's rootfs and volumes into the VM's 9p share."""

from __future__ import annotations

import os
import shutil

from .. import linux
from ..errors import ContainerError
from .guest_config import Bind


def make_binds(container_dir: str, rootfs: str, binds: list[Bind]) -> None:
    """Bind every source under ``container_dir``; read-only ones read-only on the host side too,
    so the guest cannot write through 9p where the config says it must not."""
    for bind in binds:
        source = rootfs if bind.name == "rootfs" else bind.source
        target = os.path.join(container_dir, bind.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if bind.is_dir:
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            open(target, "w").close()
        try:
            linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
            if bind.readonly:
                linux.mount("", target, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)
        except OSError as err:
            raise ContainerError(f"cannot share {source} with the VM: {err.strerror or err}") from None


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = path.rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == path.rstrip("/") or point.startswith(prefix):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(path: str) -> None:
    """Detach every mount at or below ``path`` (idempotent)."""
    for point in mounts_under(path):
        try:
            linux.umount(point, linux.MNT_DETACH)
        except OSError:
            pass


def remove_tree(path: str) -> None:
    """Unmount everything below ``path``, then remove it, never through a mount that stayed."""
    unmount_all(path)
    if mounts_under(path):
        raise ContainerError(f"cannot remove {path}: {mounts_under(path)[0]} is still mounted")
    shutil.rmtree(path, ignore_errors=True)
