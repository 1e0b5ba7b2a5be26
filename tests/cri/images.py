"""The CRI tests' images, built locally as OCI archives for `ctr -n k8s.io images import`.

* pause: what Kubernetes' pause image is: one static `/pause` (pause.c, compiled with
  `gcc -static`) on an otherwise empty filesystem, entry point `/pause`.
* busybox: Debian's static busybox with its applet links (the client tests' rootfs).
* iptables: busybox plus the host's iptables (both backends, `iptables` the nft one) with its
  extensions and libraries, for what service meshes' init containers run with NET_ADMIN.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.clients import harness
from tests.host_tools import IPTABLES_BACKENDS, add_iptables

PAUSE_REF = "localhost/pellucid-test/pause:3.9"
BUSYBOX_REF = "localhost/pellucid-test/busybox:latest"
IPTABLES_REF = "localhost/pellucid-test/iptables:latest"
PAUSE_SOURCE = Path(__file__).with_name("pause.c")


def build_pause(dest: Path) -> Path:
    """Compile pause.c into a static, stripped executable at `dest`."""
    proc = subprocess.run(["gcc", "-static", "-s", "-O2", "-Wall", "-Werror", "-o", str(dest), str(PAUSE_SOURCE)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise harness.HarnessError(f"gcc -static failed (libc6-dev installed?):\n{proc.stderr}")
    return dest


def pause_archive(workdir: Path) -> Path:
    """An OCI archive of the pause image: a layer holding only /pause (root-owned, 0755)."""
    layer = harness.single_file_tarball(build_pause(workdir / "pause"), workdir / "pause-layer.tar", "pause")
    return harness.oci_archive(layer, workdir / "pause-oci.tar", PAUSE_REF, cmd=("/pause",))


def busybox_archive(workdir: Path) -> Path:
    """An OCI archive of the busybox image (command /bin/sh)."""
    layer = harness.busybox_tarball(workdir, "busybox-layer.tar")
    return harness.oci_archive(layer, workdir / "busybox-oci.tar", BUSYBOX_REF, cmd=("/bin/sh",))


def iptables_archive(workdir: Path) -> Path:
    """An OCI archive of the iptables image (command /bin/sh)."""
    def with_iptables(rootfs: Path) -> None:
        if not add_iptables(rootfs):
            raise harness.HarnessError(f"no iptables on this host ({', '.join(IPTABLES_BACKENDS.values())})")
    layer = harness.busybox_tarball(workdir, "iptables-layer.tar", extra=with_iptables)
    return harness.oci_archive(layer, workdir / "iptables-oci.tar", IPTABLES_REF, cmd=("/bin/sh",))
