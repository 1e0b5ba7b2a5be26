"""Making a bind mount read-only all the way down (host side; the guest never imports this).

``mount -o remount,bind,ro`` changes one mount, not the mounts below it: a read-only bind of
``/`` would leave ``/sys/fs/cgroup`` or ``/run`` writable. mount_setattr(2) (Linux 5.12) with
AT_RECURSIVE changes the whole tree at once; on an older kernel every mount of the tree is
remounted read-only one by one, deepest first.
"""

from __future__ import annotations

import ctypes
import os
import platform

from .. import linux
from ..mountinfo import mounts_under
from . import safe_fs

#: mount_setattr's number: the same on every architecture that has it (the new syscall table)
SYS_MOUNT_SETATTR = 442
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
ENOSYS = 38


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def mount_setattr_readonly(fd: int) -> None:
    """mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY) on the mount ``fd`` is open on and all below it."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    result = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(fd), b"",
                           ctypes.c_uint(AT_RECURSIVE | AT_EMPTY_PATH), ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)))
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount_setattr: {os.strerror(err)}")


def make_readonly(fd: int) -> None:
    """Make the bind mount ``fd`` is open on (its root, opened without following symlinks: the
    caller's) read-only, and every mount below it."""
    if platform.machine() in ("x86_64", "aarch64", "riscv64", "ppc64le", "s390x"):
        try:
            mount_setattr_readonly(fd)
            return
        except OSError as err:
            if err.errno != ENOSYS:
                raise
    top = os.path.realpath(safe_fs.fd_path(fd))  # where the mount is now, as the mount table shows it
    for point in mounts_under(top):  # deepest first; the target itself last
        # Each reached from fd without following any symlink, not by its path.
        below = fd if point == top else safe_fs.openat2(fd, os.path.relpath(point, top), os.O_PATH, safe_fs.BENEATH)
        try:
            linux.mount("", safe_fs.fd_path(below), None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)
        finally:
            if below != fd:
                os.close(below)
