"""Values the kernel exposes as small text files (procfs, sysfs, cgroupfs)."""

from __future__ import annotations


def read_value(path: str) -> str:
    """The file's text without surrounding whitespace; "" if it is absent or cannot be read (a
    kernel without that feature, a cgroup controller not mounted)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
