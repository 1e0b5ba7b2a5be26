import os

from pellucid import mountinfo

TABLE = (
    "22 1 0:21 / / rw shared:1 - ext4 /dev/sda1 rw\n"
    "30 22 0:30 / /run/p\\303\\251llucid rw - tmpfs tmpfs rw\n"
    "31 30 0:31 / /run/p\\303\\251llucid/c1/vm/shared/c1/rootfs rw - ext4 /dev/sdb rw\n"
    "32 30 0:32 / /run/p\\303\\251llucid/c1/vm/shared/c1/my\\040volume rw - ext4 /dev/sdc rw\n"
    "33 30 0:33 / /run/p\\303\\251llucid/c1/vm/shared/c1/back\\134slash\\011tab\\012nl rw - tmpfs x rw\n"
    "34 22 0:34 / /run/p\\303\\251llucid2 rw - tmpfs tmpfs rw\n"
    "35 22 0:35 / /run/\\377raw rw - tmpfs tmpfs rw\n"
).encode()


def test_octal_escapes_are_undone_exactly_on_bytes():
    assert mountinfo.unescape(b"a\\040b\\134c\\303\\251") == b"a b\\c\xc3\xa9"
    assert mountinfo.unescape(b"not\\08escape") == b"not\\08escape"


def test_non_ascii_paths_are_found():
    found = mountinfo.mounts_under("/run/péllucid/c1", TABLE)
    assert found[-1] != "/run/péllucid/c1"
    assert set(found) == {"/run/péllucid/c1/vm/shared/c1/rootfs", "/run/péllucid/c1/vm/shared/c1/my volume",
                          "/run/péllucid/c1/vm/shared/c1/back\\slash\ttab\nnl"}
    assert mountinfo.mounts_under("/run/péllucid", TABLE)[-1] == "/run/péllucid"
    assert "/run/péllucid2" not in mountinfo.mounts_under("/run/péllucid", TABLE)


def test_paths_that_are_not_utf8_are_found():
    raw = os.fsdecode(b"/run/\xffraw")
    assert mountinfo.mounts_under(raw, TABLE) == [raw]


def test_deepest_first():
    found = mountinfo.mounts_under("/run/péllucid", TABLE)
    assert [p.count("/") for p in found] == sorted((p.count("/") for p in found), reverse=True)


def test_reads_the_real_table():
    assert "/" in mountinfo.mounts_under("/")
