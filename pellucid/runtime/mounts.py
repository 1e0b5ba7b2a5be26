"""Host bind mounts that carry a container's rootfs and volumes into the VM's 9p share."""

from __future__ import annotations

import os
import shutil

from .. import linux
from ..errors import ContainerError
from ..mountinfo import mounts_under
from . import safe_fs
from .guest_config import Bind
from .readonly import make_readonly


def make_binds(container_dir: str, rootfs: str, binds: list[Bind]) -> None:
    """Bind every source under ``container_dir``; read-only ones read-only on the host side too,
    so the guest cannot write through 9p where the config says it must not.

    ``container_dir`` is in the VM's share, which guest root can write while other containers of
    the VM run: it must be new, and every target below it is made and mounted on through file
    descriptors opened without following any symlink (pellucid.runtime.safe_fs), so that nothing
    the guest plants there leads a mount, a directory or a file out of the share."""
    share_dir, name = os.path.split(container_dir)
    share = os.open(share_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)  # host-made
    try:
        try:
            # Traversable, not listable: a user-namespaced container's root is a non-zero uid to 9p
            # and must reach its rootfs; local users are kept out by --root's 0700 above it all.
            os.mkdir(name, 0o711, dir_fd=share)
        except FileExistsError:
            raise ContainerError(f"cannot share the container's files with the VM: {container_dir} exists "
                                 "(made by the guest?)") from None
        top = safe_fs.open_dir(share, name, safe_fs.BENEATH)
        try:
            for bind in binds:
                _bind(top, rootfs if bind.name == "rootfs" else bind.source, bind)
        finally:
            os.close(top)
    finally:
        os.close(share)


def _bind(top: int, source: str, bind: Bind) -> None:
    try:
        target = safe_fs.make_path(top, bind.name, bind.is_dir, safe_fs.BENEATH, mode=0o711)  # see make_binds
        try:
            linux.mount(source, safe_fs.fd_path(target), None, linux.MS_BIND | linux.MS_REC)
        finally:
            os.close(target)
        if bind.readonly:  # on the mount just made: looked up again, it is the mount's root
            mounted = safe_fs.openat2(top, bind.name, os.O_PATH, safe_fs.BENEATH)
            try:
                make_readonly(mounted)  # the mounts below it too
            finally:
                os.close(mounted)
    except OSError as err:
        raise ContainerError(f"cannot share {source} with the VM: {err.strerror or err}") from err


def unshare(container_dir: str) -> None:
    """Undo :func:`make_binds` while the VM may still run: each mount is reached through a file
    descriptor opened without following symlinks (the guest may have moved the directories that
    hold the mount points and left links in their place), then what make_binds made is removed
    entry by entry; what the guest left there goes with the VM's state directory."""
    share_dir, name = os.path.split(container_dir)
    try:
        share = os.open(share_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        for point in mounts_under(container_dir):
            relative = os.path.relpath(point, share_dir)
            try:
                fd = safe_fs.openat2(share, relative, os.O_PATH, safe_fs.BENEATH)
            except OSError:
                continue  # moved or replaced by the guest: left for the VM's teardown
            try:
                linux.umount(safe_fs.fd_path(fd), linux.MNT_DETACH)
            except OSError:
                pass
            finally:
                os.close(fd)
        _remove_made(share, name)
    finally:
        os.close(share)


def _remove_made(share: int, name: str) -> None:
    """Remove what make_binds made (``<id>/rootfs``, ``<id>/mounts/<n>``), one entry at a time and
    never recursively: a directory not empty, or still a mount point, stays, so nothing the guest
    moved in is lost; what stays goes with the VM's state directory when the VM is gone."""
    try:
        top = safe_fs.openat2(share, name, os.O_RDONLY | os.O_DIRECTORY, safe_fs.BENEATH)
    except OSError:
        return
    try:
        try:
            mounts = safe_fs.openat2(top, "mounts", os.O_RDONLY | os.O_DIRECTORY, safe_fs.BENEATH)
        except OSError:
            mounts = -1
        if mounts >= 0:
            try:
                for entry in os.listdir(mounts):
                    _remove_entry(mounts, entry)
            finally:
                os.close(mounts)
        for entry in ("mounts", "rootfs"):
            _remove_entry(top, entry)
    finally:
        os.close(top)
    _remove_entry(share, name)


def _remove_entry(dirfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=dirfd)
        except OSError:
            pass
    except OSError:
        pass


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
