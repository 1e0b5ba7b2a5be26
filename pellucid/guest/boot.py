"""PID 1 duties before the agent serves: the mounts every container in the VM relies on."""

from __future__ import annotations

import os

from . import sysfs

# (source, target, fstype, flags, data); the root image provides every target directory.
BASE_MOUNTS = (
    ("proc", "/proc", "proc", sysfs.MS_NOSUID | sysfs.MS_NODEV | sysfs.MS_NOEXEC, None),
    ("sysfs", "/sys", "sysfs", sysfs.MS_NOSUID | sysfs.MS_NODEV | sysfs.MS_NOEXEC, None),
    ("devtmpfs", "/dev", "devtmpfs", sysfs.MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", sysfs.MS_NOSUID | sysfs.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
    ("shm", "/dev/shm", "tmpfs", sysfs.MS_NOSUID | sysfs.MS_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", sysfs.MS_NOSUID | sysfs.MS_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", sysfs.MS_NOSUID | sysfs.MS_NODEV, "mode=1777"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", sysfs.MS_NOSUID | sysfs.MS_NODEV | sysfs.MS_NOEXEC, None),
)


def mount_base() -> None:
    for source, target, fstype, flags, data in BASE_MOUNTS:
        if os.path.ismount(target) and target == "/dev":
            continue  # the kernel mounted devtmpfs itself (CONFIG_DEVTMPFS_MOUNT)
        sysfs.mount(source, target, fstype, flags, data)
    if not os.path.exists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")


def root_is_dax() -> bool:
    """Whether / is mounted with DAX, as this kernel reports it in /proc/mounts."""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "/" and parts[0] != "rootfs":
                opts = parts[3].split(",")
                return "dax" in opts or "dax=always" in opts
    return False


def init_started_ms() -> int:
    """When PID 1 was started, in ms since boot (from /proc/1/stat)."""
    with open("/proc/1/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) * 1000 // os.sysconf("SC_CLK_TCK")
