"""Paths in trees the host must not trust, opened with openat2(2) so that no symlink leads out.

Two trees are untrusted: a container's rootfs (its image chose every symlink in it) and a VM's
9p share (guest root writes it). In a rootfs, symlinks resolve as if the rootfs were ``/``
(RESOLVE_IN_ROOT, as runc's securejoin does); in the share, no symlink is followed at all
(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS). Host-only: the guest has no use for it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from ..errors import ContainerError

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2); OSError as os.open raises it."""
    number = _SYS_OPENAT2.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"openat2 is not known on {platform.machine()}")
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    while True:
        fd = _libc.syscall(ctypes.c_long(number), ctypes.c_int(dirfd), os.fsencode(path),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EINTR, errno.EAGAIN):  # EAGAIN: a rename raced the lookup
            raise OSError(err, os.strerror(err), path)


def open_dir(dirfd: int, path: str, resolve: int) -> int:
    """An O_PATH fd of the directory ``path`` below ``dirfd``."""
    return openat2(dirfd, path or ".", os.O_PATH | os.O_DIRECTORY, resolve)


def make_path(dirfd: int, path: str, is_dir: bool, resolve: int, mode: int = 0o755) -> int:
    """Create ``path`` below ``dirfd`` (its missing parents as directories; the last part a
    directory or an empty file) unless it exists; return an O_PATH fd of it. A last part that
    exists but is a symlink is refused by the lookup (or, IN_ROOT, followed inside the root)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EINVAL, "path has '..'", path)
    parent = os.dup(dirfd)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            try:
                if last and not is_dir:
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o644, dir_fd=parent))
                else:
                    os.mkdir(name, mode, dir_fd=parent)
            except FileExistsError:
                pass
            # Looked up from the tree's top, so that IN_ROOT resolves symlinks inside the root.
            walked = "/".join(parts[:i + 1])
            flags = os.O_PATH | (os.O_DIRECTORY if not last or is_dir else 0)
            child = openat2(dirfd, walked, flags, resolve)
            os.close(parent)
            parent = child
        return parent
    except BaseException:
        os.close(parent)
        raise


def make_mount_points(rootfs: str, points: list[tuple[str, bool]]) -> None:
    """Create the mount points (path in the container, is a directory) a read-only root lacks,
    inside ``rootfs`` as the container resolves paths: no symlink leads out of it."""
    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise ContainerError(f"invalid rootfs {rootfs}: {err.strerror}") from err
    try:
        for path, is_dir in points:
            try:
                os.close(make_path(root, path, is_dir, IN_ROOT))
            except OSError as err:
                raise ContainerError(f"cannot create mount point {path} in the read-only rootfs: "
                                     f"{err.strerror or err}") from err
    finally:
        os.close(root)


def fd_path(fd: int) -> str:
    """A path naming exactly the file ``fd`` is open on, whatever its name has become."""
    return f"/proc/self/fd/{fd}"
