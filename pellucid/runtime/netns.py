"""Network namespaces on the host: a new one pinned by a bind mount (as `ip netns add` does), or
the one a path names. The VM's QEMU and the shims run in it; /proc/<shim pid>/ns/net is it."""

from __future__ import annotations

import fcntl
import os

from .. import linux
from ..errors import ContainerError

NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: which kind of namespace it is


def pin_new(path: str) -> None:
    """Create a network namespace and keep it alive as a bind mount on ``path``."""
    open(path, "w").close()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            linux.unshare(linux.CLONE_NEWNET)
            linux.mount("/proc/self/ns/net", path, None, linux.MS_BIND)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        os.unlink(path)
        raise ContainerError("cannot create a network namespace")


def release(path: str) -> None:
    try:
        linux.umount(path, linux.MNT_DETACH)
    except OSError:
        pass
    try:
        os.unlink(path)
    except OSError:
        pass


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise ContainerError(f"network namespace {path}: {err.strerror}") from None


def enter(path: str) -> None:
    """Move the calling process into the network namespace at ``path``."""
    fd = _open(path)
    try:
        linux.setns(fd, linux.CLONE_NEWNET)
    finally:
        os.close(fd)


def check(path: str) -> None:
    """That ``path`` is a network namespace this process can enter (before a child tries)."""
    fd = _open(path)
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = 0
        if kind != linux.CLONE_NEWNET:
            raise ContainerError(f"{path} is not a network namespace")
    finally:
        os.close(fd)
