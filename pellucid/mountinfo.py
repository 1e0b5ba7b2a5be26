"""Reading the mount table (/proc/self/mountinfo) of the calling process.

The kernel writes a mount point's path as its bytes, with space, tab, newline and backslash as
three-digit octal escapes (``\\040``); everything else, non-ASCII bytes included, is as is. So the
table is read as bytes, the escapes are undone exactly, and the paths compared as bytes: a path
that is not valid UTF-8 (or not ASCII) is still found.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(rb"\\([0-7]{3})")
MOUNTINFO = "/proc/self/mountinfo"


def unescape(field: bytes) -> bytes:
    """A mountinfo path field's bytes, its octal escapes undone."""
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 8) & 0xFF,)), field)


def mount_points(table: bytes) -> list[bytes]:
    """The mount point (field 5) of every line of a mountinfo table."""
    points = []
    for line in table.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) > 4:
            points.append(unescape(fields[4]))
    return points


def mounts_under(path: str, table: bytes | None = None) -> list[str]:
    """Mount points at or below ``path`` (symlinks in it resolved, as the kernel shows them),
    deepest first."""
    if table is None:
        with open(MOUNTINFO, "rb") as f:
            table = f.read()
    want = os.fsencode(os.path.realpath(path)).rstrip(b"/") or b"/"
    prefix = want if want == b"/" else want + b"/"
    found = {p for p in mount_points(table) if p == want or p.startswith(prefix)}
    return [os.fsdecode(p) for p in sorted(found, key=lambda p: p.count(b"/"), reverse=True)]
