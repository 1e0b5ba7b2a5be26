"""PID 1 duties before the agent serves: the mounts every container in the VM relies on."""

from __future__ import annotations

import os
import time

from .. import linux

#: cgroup v2 controllers the root delegates, so that crun can set every OCI limit in a container's
#: cgroup (memory.max, pids.max, cpu.max, cpuset.*, io.*)
CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")
CGROUP_ROOT = "/sys/fs/cgroup"

# (source, target, fstype, flags, data); the root image provides every target directory.
BASE_MOUNTS = (
    ("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, None),
    ("sysfs", "/sys", "sysfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, None),
    ("devtmpfs", "/dev", "devtmpfs", linux.MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
    ("shm", "/dev/shm", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, None),
)


def mount_base() -> None:
    for source, target, fstype, flags, data in BASE_MOUNTS:
        if os.path.ismount(target) and target == "/dev":
            continue  # the kernel mounted devtmpfs itself (CONFIG_DEVTMPFS_MOUNT)
        if target.startswith("/dev/"):
            os.makedirs(target, exist_ok=True)  # devtmpfs starts empty of directories
        linux.mount(source, target, fstype, flags, data)
    if not os.path.exists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")


def enable_controllers() -> None:
    """Delegate the controllers to the root's children (crun enables them further down its path).
    The root cgroup is exempt from the no-internal-processes rule, so PID 1 may stay there."""
    with open(f"{CGROUP_ROOT}/cgroup.controllers") as f:
        available = f.read().split()
    wanted = [c for c in CONTROLLERS if c in available]
    if wanted:
        with open(f"{CGROUP_ROOT}/cgroup.subtree_control", "w") as f:
            f.write(" ".join("+" + c for c in wanted))


def root_is_dax() -> bool:
    """Whether / is mounted with DAX, as this kernel reports it in /proc/mounts."""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "/" and parts[0] != "rootfs":
                opts = parts[3].split(",")
                return "dax" in opts or "dax=always" in opts
    return False


def uptime_ms() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000
