"""Network namespaces on the host: a new one pinned by a bind mount (as `ip netns add` does), or
the one a path names. The VM's QEMU and the shims run in it; /proc/<shim pid>/ns/net is it."""

from __future__ import annotations

import fcntl
import os

from .. import linux
from ..errors import BundleError, ContainerError

NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: which kind of namespace it is


#: The namespaces a VM must never join: pellucid's own and the host's init's (pellucid may run in
#: a namespace of its own, under a client that runs in one).
HOST_NAMESPACES = ("/proc/self/ns/net", "/proc/1/ns/net")
HOST_NETWORK_REFUSED = ("cannot join the host's network namespace{}: a VM has a network stack of its own "
                        "(host networking is not supported; use a network namespace)")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows /proc/PID/ns/net to the namespace's nsfs inode, as a bind mount of it
    except OSError:
        return None
    return st.st_dev, st.st_ino


def is_host(path: str) -> bool:
    """Whether ``path`` is the network namespace pellucid runs in, or the host's (PID 1's)."""
    ns = _identity(path)
    return ns is not None and any(ns == _identity(own) for own in HOST_NAMESPACES)


def refuse_host(path: str) -> None:
    """Refuse a network namespace that is the host's: every interface in it would get a tap with
    tc redirects both ways, taking the host's own traffic (docker run --network host passes it).
    A namespace that cannot be looked at cannot be joined either: refused as well."""
    try:
        os.stat(path)
    except OSError as err:
        raise BundleError(f"cannot join network namespace {path}: {(err.strerror or str(err)).lower()}") from None
    if is_host(path):
        raise BundleError(HOST_NETWORK_REFUSED.format(f" {path}"))


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
