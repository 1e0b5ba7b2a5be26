"""Where a sandbox's files are: ``<state dir of the sandbox container>/vm/`` (see
pellucid.runtime.sandbox). Kept apart so that the lean commands need not import the sandbox."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..state import ContainerState
    from ..store import Store

MONITOR_SOCKET = "monitor.sock"


def vm_dir_of(store: Store, st: ContainerState) -> str:
    """The directory of the VM the container runs in (its sandbox's)."""
    return os.path.join(store.dir(st.sandbox or st.id), "vm")


def shared_dir(vm_dir: str) -> str:
    """Exported to the guest over 9p; each container of the sandbox has a directory there."""
    return os.path.join(vm_dir, "shared")
