"""What `delete` leaves to finish after it returns: its VM's exit, then the VM's host cgroup and
the container's directory.

`delete` stops the shim, asks the monitor to stop, removes the taps and unmounts the share and
the namespace pin; then it moves the container's directory into the graveyard (Store.bury: from
then on the id is free and no command sees the container) and hands the rest to a detached child
of its own (:func:`detach`), which inherits the container's lock and holds it while it waits for
the VM, stopping it harder if it does not exit, removes the cgroup and the grave. A grave whose lock
is free has lost its reaper (killed): the next ``create`` or ``delete`` finishes it
(:func:`sweep`), and a ``create`` whose cgroup is a grave's waits for that grave first, so that no
reaper ever removes a cgroup that a new container uses.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os

from .. import timeline
from ..errors import ContainerError, PellucidError
from ..mountinfo import mounts_under
from ..state import ContainerState
from ..store import LOCK_FILE, STATE_FILE, Store, rmtree

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from .interfaces import Host


def reap(host: Host, grave: str, st: ContainerState) -> None:
    """Finish the grave of ``st``: wait for its VM (stopping it if need be: by pid and start time,
    never another process), remove its cgroup, then the grave. Idempotent."""
    with timeline.step("reaper: the VM's exit, the cgroup, the grave"):
        host.stop_vm(os.path.join(grave, "vm"), st.monitor_pid, st.monitor_start)
        host.unmount_all(grave)
        if st.cgroup.dirs:
            host.remove_cgroup(st.cgroup)  # after the VM and its shims: they were in it
        busy = mounts_under(grave)
        if busy:  # never delete through a mount
            raise ContainerError(f"cannot remove {grave}: {busy[0]} is still mounted")
        rmtree(grave, last=LOCK_FILE)


def _load(grave: str) -> ContainerState | None:
    try:
        with open(os.path.join(grave, STATE_FILE), "rb") as f:
            return ContainerState.from_dict(json.loads(f.read()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError, TypeError) as err:
        raise ContainerError(f"corrupt state in {grave}: {err}") from err


def _same_cgroup(st: ContainerState, cgroup_path: str) -> bool:
    tail = "/" + cgroup_path.strip("/")
    return bool(cgroup_path) and any(d.rstrip("/").endswith(tail) for d in st.cgroup.dirs)


def sweep(store: Store, host: Host, cgroup_path: str = "") -> None:
    """Finish the graves that lost their reaper; with ``cgroup_path`` (a create's), first wait for
    any grave whose cgroup that is. A grave that cannot be finished is left for the next sweep."""
    for grave in store.graves():
        try:
            fd = os.open(os.path.join(grave, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed meanwhile, or its removal was killed after the lock (last)
            try:
                os.rmdir(grave)
            except OSError:
                pass
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno != errno.EWOULDBLOCK:
                    raise
                st = _load(grave)
                if st is None or not _same_cgroup(st, cgroup_path):
                    continue  # its reaper is at work
                with timeline.step("wait for the reaper of a container with this cgroup"):
                    fcntl.flock(fd, fcntl.LOCK_EX)
            st = _load(grave)
            if st is not None:
                reap(host, grave, st)
        except (PellucidError, OSError) as err:
            from .. import log
            log.warning(f"cannot finish removing {grave}: {err}")
        finally:
            os.close(fd)


def detach(work: Callable[[], None]) -> None:
    """Run ``work`` in a grandchild of its own session, its stdio on /dev/null (whoever reads the
    command's output to EOF must not wait for it), keeping every other descriptor: the container's
    lock among them, which it goes on holding after this process has released it and exited.
    Returns once the intermediate child has exited (at once)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                try:
                    work()
                except BaseException as err:  # the grave stays for the next sweep
                    from .. import log
                    log.warning(f"removing a deleted container's remains: {err}")
                finally:
                    os._exit(0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
