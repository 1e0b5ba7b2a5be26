"""The CRI tests' images, built locally as OCI archives for `ctr -n k8s.io images import`.

* pause: what Kubernetes' pause image is: one static `/pause` (pause.c, compiled with
  `gcc -static`) on an otherwise empty filesystem, entry point `/pause`.
* busybox: Debian's static busybox with its applet links (the client tests' rootfs).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from tests.clients import harness

PAUSE_REF = "localhost/pellucid-test/pause:3.9"
BUSYBOX_REF = "localhost/pellucid-test/busybox:latest"
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
    binary = build_pause(workdir / "pause")
    layer = workdir / "pause-layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        data = binary.read_bytes()
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o755, 0, 0, 0
        tar.addfile(info, io.BytesIO(data))
    return harness.oci_archive(layer, workdir / "pause-oci.tar", PAUSE_REF, cmd=("/pause",))


def busybox_archive(workdir: Path) -> Path:
    """An OCI archive of the busybox image (command /bin/sh)."""
    layer = harness.busybox_tarball(workdir, "busybox-layer.tar")
    return harness.oci_archive(layer, workdir / "busybox-oci.tar", BUSYBOX_REF, cmd=("/bin/sh",))
