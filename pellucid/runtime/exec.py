"""`exec`: a new process in a running container, behind a shim of its own.

The container's lock is held only for the guard: the shim then waits for the process to start in
the VM, and ``kill`` or ``delete`` of the container must not queue behind that.
"""

from __future__ import annotations

import os
from typing import Any

from .. import messages
from ..errors import ContainerError
from ..host_messages import ShimRequest
from ..state import Status
from ..store import Store
from . import guest_config
from .layout import MONITOR_SOCKET, vm_dir_of
from .lifecycle import refresh, sync_shares, system_host
from .shims import write_pid_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .interfaces import Host, ShimProcess

START_TIMEOUT = 60.0


def exec_process(store: Store, id: str, process: dict[str, Any], *, pid_file: str = "",
                 console_socket: str = "", detach: bool = False, host: Host | None = None) -> ShimProcess:
    host = host or system_host()
    with store.lock(id):
        st, now = refresh(store, id)
        if not now.can_exec():
            if now is Status.PAUSED:
                raise ContainerError("cannot exec in a paused container")
            raise ContainerError(f"cannot exec in a {now.value} container")
    terminal = bool(process.get("terminal"))
    if terminal and detach and not console_socket:
        raise ContainerError("cannot allocate tty if pellucid will detach without setting console socket")
    sync_shares(host, store, st, invalidate=True)  # the new process sees the host's files as they are now
    shim = host.start_shim(st.netns, console=bool(console_socket), cgroup=st.cgroup.dirs)
    try:
        request = messages.ExecProcess(id, guest_config.process_for_guest(process))
        shim.send(ShimRequest(monitor=os.path.join(vm_dir_of(store, st), MONITOR_SOCKET), op=request.OP,
                              args=request.to_json(), console_socket=console_socket, detached=detach),
                  START_TIMEOUT)
        write_pid_file(pid_file, shim.pid)
    except BaseException:
        shim.abort()
        raise
    return shim
