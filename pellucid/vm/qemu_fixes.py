"""Whether a QEMU carries the fixes pellucid relies on, from its ``--version`` line. Pure functions.

CVE-2023-2861: QEMU's 9p server would open host special files (a FIFO or device node the guest made
or found in the share), so a guest could reach past the export. Fixed upstream by "9pfs: prevent
opening special files" in 8.1.0 and the 8.0.3 and 7.2.4 stable releases. Debian (whose build names
its package version in the line: ``QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)``)
shipped it for bookworm in 1:7.2+dfsg-7+deb12u1 (the 7.2.4 stable update; the package's own
changelog says so). A distribution that backports the fix to an older base (Ubuntu, RHEL) is not
recognised: its QEMU gets the warning, which says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CVE_2023_2861 = "CVE-2023-2861"
#: the first fixed upstream release on each line that has the fix (and every line from 8.1 on)
UPSTREAM_FIXED = ((8, 1, 0), (8, 0, 3), (7, 2, 4))
#: Debian package lines (upstream part of the version) and the first Debian version with the fix
DEBIAN_FIXED = {"7.2+dfsg": "1:7.2+dfsg-7+deb12u1"}

_LINE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?[^\s(]*(?:\s*\(([^)]*)\))?")


@dataclass(frozen=True)
class QemuVersion:
    upstream: tuple[int, int, int]
    package: str = ""  # the distribution's package version, where the build names it ("Debian V")


@dataclass(frozen=True)
class Verdict:
    fixed: bool
    detail: str


def parse(line: str) -> QemuVersion | None:
    """The version in QEMU's ``--version`` first line; None if it is not one."""
    m = _LINE.search(line)
    if m is None:
        return None
    package = ""
    if m.group(4):
        words = m.group(4).split()
        if len(words) == 2 and words[0] == "Debian":
            package = words[1]
    return QemuVersion((int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)), package)


def upstream_fixed(version: tuple[int, int, int]) -> bool:
    """Upstream QEMU ``version`` has the fix: 8.1.0 and later, 8.0.3+, 7.2.4+."""
    if version >= UPSTREAM_FIXED[0]:
        return True
    return any(version[:2] == fixed[:2] and version >= fixed for fixed in UPSTREAM_FIXED[1:])


def _debian_line(package: str) -> str:
    """The upstream part of a Debian package version of Debian's own ("" for another distribution's)."""
    if "ubuntu" in package:
        return ""
    upstream = package.split(":", 1)[-1].rsplit("-", 1)[0]
    return upstream if upstream in DEBIAN_FIXED else ""


def cve_2023_2861(line: str) -> Verdict:
    """Whether the QEMU of this ``--version`` line has the 9p special-file fix; the reason, for ``check``."""
    version = parse(line)
    if version is None:
        return Verdict(False, f"cannot tell whether QEMU has the fix for {CVE_2023_2861} "
                              f"(9p opening host special files): unknown version {line.strip()!r}")
    debian_line = _debian_line(version.package)
    if debian_line:
        fixed_in = DEBIAN_FIXED[debian_line]
        if compare_debian(version.package, fixed_in) >= 0:
            return Verdict(True, f"Debian {version.package} has the fix for {CVE_2023_2861} (since {fixed_in})")
        return Verdict(False, f"Debian {version.package} lacks the fix for {CVE_2023_2861} (9p opening host "
                              f"special files): upgrade to {fixed_in} or later")
    shown = ".".join(map(str, version.upstream))
    if upstream_fixed(version.upstream):
        return Verdict(True, f"QEMU {shown} has the fix for {CVE_2023_2861}")
    backport = f" (unless {version.package} backports it)" if version.package else ""
    return Verdict(False, f"QEMU {shown} may lack the fix for {CVE_2023_2861} (9p opening host special "
                          f"files){backport}: it is in 7.2.4, 8.0.3, 8.1.0 and later")


# Debian version comparison, as dpkg does it (deb-version(7)).

def _order(s: str, i: int) -> int:
    """dpkg's weight of the character at ``i`` (0 past the end or on a digit; "~" before everything)."""
    if i >= len(s) or s[i].isdigit():
        return 0
    c = s[i]
    if c.isalpha():
        return ord(c)
    return -1 if c == "~" else ord(c) + 256


def _digit(s: str, i: int) -> bool:
    return i < len(s) and s[i].isdigit()


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of two upstream versions or revisions: runs of non-digits, then numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not _digit(a, i)) or (j < len(b) and not _digit(b, j)):
            ac, bc = _order(a, i), _order(b, j)
            if ac != bc:
                return -1 if ac < bc else 1
            i, j = i + 1, j + 1
        na = nb = ""
        while _digit(a, i):
            na, i = na + a[i], i + 1
        while _digit(b, j):
            nb, j = nb + b[j], j + 1
        if int(na or 0) != int(nb or 0):
            return -1 if int(na or 0) < int(nb or 0) else 1
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_debian(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version ``a`` sorts before, with or after ``b``."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)
