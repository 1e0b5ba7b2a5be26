"""QEMU's confinement, its pure parts: the capability set it keeps and the seccomp program, run
through a small interpreter of the instructions it uses."""

from __future__ import annotations

import errno
import struct

import pytest

from pellucid.vm import confine
from pellucid.vm.confine import ARCHES, AUDIT_ARCH_AARCH64, AUDIT_ARCH_X86_64, Instruction, program


def run(prog: list[Instruction], nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64) -> int:
    """What ``prog`` returns for one syscall: a classic-BPF interpreter of the opcodes the filter uses."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = prog[pc]
        if op == confine.BPF_RET_K:
            return k
        if op == confine.BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
            continue
        taken = {confine.BPF_JEQ_K: acc == k, confine.BPF_JGE_K: acc >= k, confine.BPF_JSET_K: bool(acc & k)}[op]
        pc += 1 + (jt if taken else jf)

ALLOW = confine.SECCOMP_RET_ALLOW
EPERM = confine.SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = confine.SECCOMP_RET_ERRNO | errno.ENOSYS
X86 = program(ARCHES["x86_64"])
ARM = program(ARCHES["aarch64"])
O_CREAT, O_RDWR, O_TMPFILE = 0o100, 0o2, 0o20200000

# x86-64 numbers
OPEN, CREAT, MKDIR, CHMOD, FCHMOD, MKNOD = 2, 85, 83, 90, 91, 133
OPENAT, MKDIRAT, MKNODAT, FCHMODAT, FCHMODAT2, OPENAT2, IO_URING_SETUP, READ = 257, 258, 259, 268, 452, 437, 425, 0


def test_qemu_keeps_chown_dac_override_and_fowner_only():
    assert confine.KEEP == {confine.CAP_CHOWN, confine.CAP_DAC_OVERRIDE, confine.CAP_FOWNER}
    assert confine.cap_mask(confine.KEEP) == 0b1011
    for dropped in (confine.CAP_MKNOD, confine.CAP_SETFCAP, confine.CAP_FSETID, confine.CAP_DAC_READ_SEARCH,
                    confine.CAP_SYS_ADMIN, confine.CAP_SETUID, confine.CAP_SETGID, confine.CAP_SETPCAP,
                    confine.CAP_NET_ADMIN):
        assert not confine.cap_mask(confine.KEEP) & (1 << dropped)


def test_the_capabilities_dropped_are_every_other_one_the_kernel_knows():
    c = confine.Confinement(machine="x86_64", gid=65534)
    assert set(c._drop) | confine.KEEP == set(range(confine.last_cap() + 1))
    assert not set(c._drop) & confine.KEEP
    assert (c._data[0].effective, c._data[0].permitted, c._data[0].inheritable) == (0b1011, 0b1011, 0)
    assert (c._data[1].effective, c._data[1].permitted, c._data[1].inheritable) == (0, 0, 0)


@pytest.mark.parametrize("nr,args", [
    (CHMOD, (0, 0o4755)), (FCHMOD, (3, 0o4700)), (FCHMODAT, (3, 0, 0o4755)), (FCHMODAT2, (3, 0, 0o6755, 0)),
    (OPEN, (0, O_CREAT | O_RDWR, 0o4755)), (OPENAT, (3, 0, O_CREAT, 0o4700)), (OPENAT, (3, 0, O_TMPFILE, 0o4700)),
    (CREAT, (0, 0o4755)), (MKNOD, (0, 0o100000 | 0o4755, 0)), (MKNODAT, (3, 0, 0o100000 | 0o4755, 0)),
])
def test_a_setuid_mode_is_refused(nr, args):
    assert run(X86, nr, args) == EPERM


@pytest.mark.parametrize("nr,args", [
    (CHMOD, (0, 0o755)), (FCHMODAT, (3, 0, 0o2775)), (FCHMODAT, (3, 0, 0o1777)),  # setgid: the kernel's to drop
    (OPEN, (0, O_CREAT, 0o644)), (OPENAT, (3, 0, O_CREAT | O_RDWR, 0o2644)),
    (OPENAT, (3, 0, O_RDWR, 0o4755)),  # no O_CREAT: the mode is not used
    (MKDIR, (0, 0o6755)), (MKDIRAT, (3, 0, 0o2755)),  # the kernel drops both bits from mkdir's mode
    (MKNODAT, (3, 0, 0o010644, 0)), (READ, (0, 0, 0o4000)),
    (CHMOD, (0, 0xFFFFFFFF & ~0o4000)),  # every bit but setuid
])
def test_everything_else_is_allowed(nr, args):
    assert run(X86, nr, args) == ALLOW


def test_only_the_low_32_bits_of_a_mode_count():
    # mode_t is 32 bits: the kernel ignores the upper half, so must the filter (and it does not let them hide setuid)
    assert run(X86, CHMOD, (0, (1 << 40) | 0o755)) == ALLOW
    assert run(X86, CHMOD, (0, (1 << 40) | 0o4755)) == EPERM


def test_no_socket_can_be_made():
    for domain in (1, 2, 10, 16, 17):  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET
        assert run(X86, 41, (domain, 1, 0)) == EPERM
    assert run(X86, 53, (1, 1, 0, 0)) == ALLOW  # socketpair: connected to nothing but itself
    assert run(ARM, 198, (1, 1, 0), arch=AUDIT_ARCH_AARCH64) == EPERM


def test_openat2_and_io_uring_get_enosys_for_a_fallback():
    assert run(X86, OPENAT2, (3, 0, 0, 24)) == ENOSYS
    assert run(X86, IO_URING_SETUP, (8, 0)) == ENOSYS


def test_another_abi_is_refused():
    assert run(X86, READ, (), arch=0x40000003) == EPERM  # i386 (int 0x80)
    assert run(X86, READ | confine.X32_SYSCALL_BIT) == EPERM  # x32
    assert run(X86, CHMOD, (0, 0o755), arch=AUDIT_ARCH_AARCH64) == EPERM


def test_aarch64_has_only_the_at_calls():
    assert run(ARM, 53, (3, 0, 0o4755), arch=AUDIT_ARCH_AARCH64) == EPERM  # fchmodat
    assert run(ARM, 56, (3, 0, O_CREAT, 0o4755), arch=AUDIT_ARCH_AARCH64) == EPERM  # openat
    assert run(ARM, 56, (3, 0, 0, 0o4755), arch=AUDIT_ARCH_AARCH64) == ALLOW
    assert run(ARM, 52, (3, 0o755), arch=AUDIT_ARCH_AARCH64) == ALLOW  # fchmod
    assert run(ARM, CHMOD, (0, 0o4755), arch=AUDIT_ARCH_AARCH64) == ALLOW  # x86's chmod is another call there
    assert run(ARM, 0x40000000, (), arch=AUDIT_ARCH_AARCH64) == ALLOW  # no x32 there
    assert run(ARM, 0, (), arch=AUDIT_ARCH_X86_64) == EPERM


def test_every_path_of_the_program_ends_in_a_return():
    for prog in (X86, ARM):
        assert prog[-1][0] == confine.BPF_RET_K
        for pc, (op, jt, jf, _) in enumerate(prog):
            if op != confine.BPF_RET_K:
                assert pc + 1 + max(jt, jf) < len(prog)
        assert len(prog) < 4096  # BPF_MAXINSNS


def test_an_unknown_architecture_is_not_confined_silently():
    with pytest.raises(OSError, match="no seccomp filter for riscv64"):
        confine.Confinement(machine="riscv64")
