"""The CVE-2023-2861 check's decision on sample QEMU version lines, and Debian version ordering."""

from __future__ import annotations

import pytest

from pellucid.vm.qemu_fixes import QemuVersion, compare_debian, cve_2023_2861, parse, upstream_fixed


@pytest.mark.parametrize("line,fixed", [
    # Debian bookworm: the package version decides (fixed in 1:7.2+dfsg-7+deb12u1)
    ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", True),
    ("QEMU emulator version 7.2.4 (Debian 1:7.2+dfsg-7+deb12u1)", True),
    ("QEMU emulator version 7.2.4 (Debian 1:7.2+dfsg-7+deb12u1+b2)", True),
    ("QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7)", False),
    ("QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7~bpo11+1)", False),
    ("QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-5)", False),
    # Debian lines beyond the table, and upstream builds: the upstream version decides
    ("QEMU emulator version 8.0.3 (Debian 1:8.0.3+dfsg-1)", True),
    ("QEMU emulator version 10.0.3 (Debian 1:10.0.3+ds-0+deb13u1)", True),
    ("QEMU emulator version 5.2.0 (Debian 1:5.2+dfsg-11+deb11u3)", False),  # bullseye: not recognised
    ("QEMU emulator version 8.1.0", True),
    ("QEMU emulator version 9.2.50 (v9.2.0-1234-gdeadbeef)", True),
    ("QEMU emulator version 8.0.3", True),
    ("QEMU emulator version 8.0.2", False),
    ("QEMU emulator version 7.2.4", True),
    ("QEMU emulator version 7.2.3", False),
    ("QEMU emulator version 7.1.0", False),
    ("QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6.15)", False),  # a backport is not recognised
    ("QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1.4)", True),
    ("qemu-system-x86_64: command not found", False),
    ("", False),
])
def test_the_fix_is_recognised_from_the_version_line(line, fixed):
    assert cve_2023_2861(line).fixed is fixed


def test_the_warning_says_what_to_do():
    old = cve_2023_2861("QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7)").detail
    assert "CVE-2023-2861" in old and "upgrade to 1:7.2+dfsg-7+deb12u1" in old
    ubuntu = cve_2023_2861("QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6.15)").detail
    assert "may lack" in ubuntu and "unless 1:6.2+dfsg-2ubuntu6.15 backports it" in ubuntu
    assert "unknown version" in cve_2023_2861("nonsense").detail


def test_parse():
    assert parse("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)") == \
        QemuVersion((7, 2, 22), "1:7.2+dfsg-7+deb12u18+b3")
    assert parse("QEMU emulator version 8.1") == QemuVersion((8, 1, 0))
    assert parse("QEMU emulator version 9.0.0 (qemu-9.0.0-1.fc40)") == QemuVersion((9, 0, 0))
    assert parse("Copyright (c) 2003-2022 Fabrice Bellard") is None


def test_upstream_lines():
    assert upstream_fixed((8, 1, 0)) and upstream_fixed((9, 0, 0)) and upstream_fixed((8, 0, 4))
    assert not upstream_fixed((8, 0, 0)) and not upstream_fixed((7, 2, 3)) and not upstream_fixed((6, 2, 0))


@pytest.mark.parametrize("a,b,order", [
    ("1:7.2+dfsg-7+deb12u18+b3", "1:7.2+dfsg-7+deb12u1", 1),
    ("1:7.2+dfsg-7+deb12u1", "1:7.2+dfsg-7+deb12u1", 0),
    ("1:7.2+dfsg-7+deb12u9", "1:7.2+dfsg-7+deb12u10", -1),  # numbers, not strings
    ("1:7.2+dfsg-7", "1:7.2+dfsg-7+deb12u1", -1),
    ("1:7.2+dfsg-7~bpo11+1", "1:7.2+dfsg-7", -1),  # ~ sorts before the end
    ("7.2+dfsg-7+deb12u1", "1:7.2+dfsg-7", -1),  # the epoch first
    ("1.0", "1.0-0", 0),
    ("1.0a", "1.0", 1),
    ("1.0+", "1.0a", 1),  # non-letters after letters
    ("2:1.0", "1:9.9", 1),
])
def test_debian_version_order(a, b, order):
    assert compare_debian(a, b) == order
    assert compare_debian(b, a) == -order
