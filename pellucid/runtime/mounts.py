"""Host bind mounts that carry a container's rootfs and volumes into the VM's 9p share."""

from __future__ import annotations

import os
import shutil

from .. import linux
from ..errors import ContainerError
from ..mountinfo import mounts_under
from .guest_config import Bind
from .readonly import make_readonly


def make_binds(container_dir: str, rootfs: str, binds: list[Bind]) -> None:
    """Bind every source under ``container_dir``; read-only ones read-only on the host side too,
    so the guest cannot write through 9p where the config says it must not."""
    for bind in binds:
        source = rootfs if bind.name == "rootfs" else bind.source
        target = os.path.join(container_dir, bind.name)
        # Traversable, not listable: a user-namespaced container's root is a non-zero uid to 9p and
        # must reach its rootfs; local users are kept out by --root's 0700 above it all.
        os.makedirs(os.path.dirname(target), 0o711, exist_ok=True)
        if bind.is_dir:
            os.makedirs(target, 0o700, exist_ok=True)
        elif not os.path.exists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        try:
            linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
            if bind.readonly:
                make_readonly(target)  # the mounts below it too
        except OSError as err:
            raise ContainerError(f"cannot share {source} with the VM: {err.strerror or err}") from err


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
    busy = mounts_under(path)
    if busy:
        raise ContainerError(f"cannot remove {path}: {busy[0]} is still mounted")
    shutil.rmtree(path, ignore_errors=True)
