"""QEMU's file view (Landlock rules), its pure part: which paths, with which rights."""

from __future__ import annotations

from pellucid.vm import file_view
from pellucid.vm.file_view import DEVICE, PROGRAM, READ, READ_FILE, READ_WRITE, Rule, handled, rules
from pellucid.vm.qemu_args import Share, VMSpec


def spec(**changes) -> VMSpec:
    base = dict(qemu="/usr/bin/qemu-system-x86_64", machine="q35", accelerator="tcg", kernel="/a/vmlinux",
                image="/a/root.img", image_size=1 << 20, firmware="/usr/share/qemu/qboot.rom")
    return VMSpec(**{**base, **changes})


def test_a_vm_reads_its_programs_and_assets_and_writes_only_its_directory_and_shares():
    got = rules(spec(shares=(Share("sandbox", "/run/p/c1/vm/shared"), Share("ro", "/data", readonly=True))),
                "/run/p/c1/vm")
    assert Rule("/usr", PROGRAM) in got and Rule("/lib64", PROGRAM) in got
    assert {r.path for r in got if r.access == READ_FILE} == {"/etc/ld.so.cache", "/a/vmlinux", "/a/root.img",
                                                              "/usr/share/qemu/qboot.rom"}
    assert {r.path for r in got if r.access == DEVICE} == {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random",
                                                           "/dev/kvm", "/dev/net/tun"}
    assert {r.path for r in got if r.access == READ_WRITE} == {"/run/p/c1/vm", "/run/p/c1/vm/shared"}
    assert Rule("/data", READ) in got
    assert not any(r.path in ("/", "/etc", "/proc", "/sys", "/dev", "/var", "/tmp") for r in got)


def test_no_device_node_is_made_anywhere():
    for rule in rules(spec(shares=(Share("s", "/s"),)), "/w"):
        assert not rule.access & (file_view.MAKE_CHAR | file_view.MAKE_BLOCK)


def test_a_clone_writes_its_ram_file_and_a_console_outside_its_directory_is_writable():
    got = rules(spec(ram_file="/dev/shm/t/k/ram", console_file="/var/log/p/console.log"), "/w")
    assert Rule("/dev/shm/t/k/ram", READ_FILE | file_view.WRITE_FILE | file_view.TRUNCATE) in got
    assert Rule("/var/log/p", READ_WRITE) in got


def test_a_qemu_outside_usr_brings_its_prefix():
    assert Rule("/opt/qemu", PROGRAM) in rules(spec(qemu="/opt/qemu/bin/qemu-system-x86_64"), "/w")


def test_what_each_landlock_abi_restricts():
    assert handled(0) == (0, 0, 0)
    fs1, net1, scope1 = handled(1)
    assert fs1 == (1 << 13) - 1 and not net1 and not scope1 and not fs1 & file_view.REFER
    assert handled(3)[0] & file_view.TRUNCATE and not handled(3)[0] & file_view.IOCTL_DEV
    assert handled(4)[1] == file_view.NET_BIND_TCP | file_view.NET_CONNECT_TCP
    assert handled(5)[0] & file_view.IOCTL_DEV and not handled(5)[2]
    assert handled(7) == ((1 << 16) - 1, 3, file_view.SCOPE_ABSTRACT_UNIX_SOCKET | file_view.SCOPE_SIGNAL)


def test_every_right_granted_is_one_landlock_knows():
    for rule in rules(spec(shares=(Share("s", "/s"),), ram_file="/r"), "/w"):
        assert rule.access & ~handled(7)[0] == 0
