"""Mounts below a directory, from /proc/self/mountinfo, and unmounting them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def _unescape_mountinfo(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts_under(path: str | Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    base = os.path.realpath(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), len(p)), reverse=True)


def unmount_all_under(path: str | Path) -> None:
    """Lazily unmount everything at or below `path`, deepest first, until nothing is left."""
    for _ in range(10):
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True)
