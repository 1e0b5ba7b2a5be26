"""Reading the mount table (/proc/self/mountinfo) of the calling process."""

from __future__ import annotations


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``, deepest first (mountinfo escapes blanks as octal)."""
    path = path.rstrip("/")
    prefix = path + "/"
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4].encode().decode("unicode_escape") for line in f}
    return sorted((p for p in points if p == path or p.startswith(prefix)), key=lambda p: p.count("/"),
                  reverse=True)
