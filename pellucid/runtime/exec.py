"""`exec`: a new process in a running container, behind a shim of its own."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ContainerError
from ..state import Status, Store, status
from . import guest_config, sandbox
from .lifecycle import vm_dir_of
from .shims import ShimHandle, write_pid_file


def exec_process(store: Store, id: str, process: dict[str, Any], *, pid_file: str = "",
                 console_socket: str = "", detach: bool = False) -> ShimHandle:
    st = store.load(id)
    now = status(st)
    if now is Status.PAUSED:
        raise ContainerError("cannot exec in a paused container")
    if now not in (Status.CREATED, Status.RUNNING):
        raise ContainerError(f"cannot exec in a {now.value} container")
    terminal = bool(process.get("terminal"))
    if terminal and detach and not console_socket:
        raise ContainerError("cannot allocate tty if pellucid will detach without setting console socket")
    shim = ShimHandle(st.extra.get("netns") or None, console=bool(console_socket))
    try:
        shim.send({"monitor": os.path.join(vm_dir_of(store, st), sandbox.MONITOR_SOCKET), "op": "exec_process",
                   "args": {"id": id, "process_spec": guest_config.process_for_guest(process)},
                   "console_socket": console_socket}, 60)
        write_pid_file(pid_file, shim.pid)
    except BaseException:
        shim.abort()
        raise
    return shim
