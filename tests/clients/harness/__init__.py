"""Drive real container clients (dockerd, containerd/ctr, podman) against a runtime binary.

Every client runs PRIVATELY: its own temporary directory under /tmp (short, because unix
socket paths are limited to 108 bytes), its own sockets, state and storage, and its own
bridge in 169.254.0.0/16. Nothing is shared with a system dockerd, containerd or podman
that may be running. Each helper is a context manager whose exit tears everything down
in `finally`: containers, daemons (SIGTERM, then SIGKILL), shims, left-over processes,
mounts under its directory, cgroups, bridges, and the directory itself. `leftovers()`
lists anything that survived, for tests to assert on.

One module per job: binaries (what is installed), commands (running them, errors), images
(built locally), processes, mounts, network, cgroups (host state and its cleanup), service
(what every client helper shares), and one module per client. Tests use this package's
names: ``from tests.clients import harness; harness.Dockerd(...)``.

Standard library only (Python 3.11).
"""

from .binaries import BUSYBOX, CNI_BIN_DIR, DOCKER_CLI, RUNC, configured_runtime, logging_runtime, need
from .commands import CommandError, HarnessError, run_cmd, tail
from .containerd import Containerd
from .dockerd import Dockerd
from .images import busybox_rootfs, busybox_tarball, oci_archive, python_rootfs, python_tarball, single_file_tarball
from .mounts import mounts_under, unmount_all_under
from .network import free_port, veths
from .podman import Podman
from .processes import kill_pids, pids_referencing, stop_process
from .service import PrivateService

__all__ = [
    "BUSYBOX", "CNI_BIN_DIR", "DOCKER_CLI", "RUNC", "CommandError", "Containerd", "Dockerd", "HarnessError",
    "configured_runtime", "python_rootfs", "python_tarball",
    "Podman", "PrivateService", "busybox_rootfs", "busybox_tarball", "free_port", "kill_pids", "logging_runtime",
    "mounts_under", "need", "oci_archive", "pids_referencing", "run_cmd", "single_file_tarball", "stop_process",
    "tail", "unmount_all_under", "veths",
]
