"""The main job's last step: run a busybox container with pellucid and show that it ran in a VM
(its kernel release and boot id differ from the host's). ``python -m pellucid.demo BUNDLE_DIR``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from .oci.default_spec import default_spec

BUSYBOX = "/bin/busybox"
SCRIPT = 'echo "kernel=$(uname -r) boot_id=$(cat /proc/sys/kernel/random/boot_id)"'


def make_bundle(bundle: str) -> None:
    rootfs = os.path.join(bundle, "rootfs")
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(rootfs, "bin/busybox"))
    for applet in ("sh", "cat", "uname", "echo"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    config = default_spec()
    config["process"].update(terminal=False, args=["/bin/sh", "-c", SCRIPT])
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f, indent="\t")


def main(bundle: str) -> int:
    make_bundle(bundle)
    with open("/proc/sys/kernel/random/boot_id") as f:
        host_boot = f.read().strip()
    started = time.monotonic()
    out = subprocess.run(["pellucid", "run", "--bundle", bundle, f"demo-{os.getpid()}"], capture_output=True,
                         text=True, timeout=300)
    elapsed = time.monotonic() - started
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        print(f"demo: pellucid run failed with status {out.returncode}")
        return 1
    fields = dict(part.split("=", 1) for part in out.stdout.split())
    print(f"host:      kernel={os.uname().release} boot_id={host_boot}")
    print(f"container: kernel={fields['kernel']} boot_id={fields['boot_id']}  ({elapsed:.1f}s for pellucid run)")
    in_vm = fields["kernel"] != os.uname().release and fields["boot_id"] != host_boot
    print("the container ran in its own VM" if in_vm else "demo: the container did NOT run in a VM")
    return 0 if in_vm else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
