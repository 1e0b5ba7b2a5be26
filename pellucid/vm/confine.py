"""QEMU's confinement, applied in the child between fork and exec (all of it inherited by QEMU):

* only the capabilities QEMU needs (:data:`KEEP`): 9p ``passthrough`` runs guest root's file
  operations on the host, so it keeps what that takes (chown to the guest's ids, DAC and owner
  overrides) and nothing else: no CAP_MKNOD (no device nodes on the host), no CAP_SETFCAP (no file
  capabilities), no CAP_FSETID, no CAP_DAC_READ_SEARCH (no ``open_by_handle_at``), no CAP_SYS_ADMIN.
  The bounding set, the ambient set and the inheritable set are emptied of the rest, so that the
  exec of QEMU as root gives it these and no more;
* no setuid file: a seccomp filter (classic BPF, :func:`program`) refuses every syscall that would
  give a file the setuid bit (the chmod family, and open/creat/mknod with it in the mode). A file's
  owner may set it without any capability, so capabilities alone cannot stop the guest's root from
  making a setuid-root file on a host volume; the filter can. It also refuses ``openat2`` (its mode
  is behind a pointer; callers fall back to ``openat``), ``io_uring_setup`` (io_uring's operations
  pass no seccomp check; QEMU falls back to epoll), ``socket`` (QEMU gets its sockets and taps
  already open, or opens /dev/net/tun; a new socket could reach a host service: Landlock does not
  cover connecting to a Unix socket by path, such as the container engine's) and, on x86-64, the
  x32 ABI;
* no setgid file: QEMU runs in a group that grants nothing (:func:`qemu_gid`, the kernel's overflow
  group, "nogroup"), with no supplementary groups and without CAP_FSETID, so the kernel itself
  drops the setgid bit from every chmod and create whose file is not of that group, whatever the
  guest asks. (The filter cannot do this: QEMU chmods every directory it makes with the mode the
  guest sent, which carries setgid under a setgid parent, and refusing that would refuse mkdir
  there. The cost: a directory made through 9p under a setgid one does not inherit the bit itself;
  its group, which the guest sends, is still the parent's);
* no new privileges (no setuid or file-capability gain on any later exec);
* only the host files it needs (pellucid.vm.file_view, Landlock), when the parent gives a ruleset.

QEMU's own ``-sandbox`` (qemu_args) is installed on top of this by QEMU itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
from dataclasses import dataclass

from ..kernfs import read_value
from . import file_view

# Capabilities (linux/capability.h).
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_MKNOD = 27
CAP_SETFCAP = 31

#: what QEMU keeps: 9p passthrough creates files as root, then chowns them to the guest's ids
#: (CHOWN); it reads, writes and lists files whatever their owner and mode (DAC_OVERRIDE); it
#: chmods, utimes and sets xattrs and ACLs on files it does not own (FOWNER). Taps are opened by
#: name as root (a tap with no owner needs no CAP_NET_ADMIN to attach), /dev/kvm and /dev/net/tun
#: are root's: neither needs a capability.
KEEP = frozenset((CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER))

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
PR_SET_THP_DISABLE = 41
SECCOMP_MODE_FILTER = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Classic BPF (linux/filter.h, linux/seccomp.h, linux/audit.h).
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000
OFFSET_NR = 0
OFFSET_ARCH = 4

S_ISUID = 0o4000
#: open flags under which the mode argument is used (O_CREAT, __O_TMPFILE; the same on x86-64 and arm64)
O_CREATING = 0o100 | 0o20000000


@dataclass(frozen=True)
class Rule:
    """A syscall whose ``mode`` argument (index) may carry setuid; with ``flags`` (index) only when
    those flags create a file."""

    nr: int
    mode: int
    flags: int = -1


@dataclass(frozen=True)
class Arch:
    """One architecture's syscalls for the filter."""

    audit: int  # AUDIT_ARCH_*
    mode_rules: tuple[Rule, ...]
    enosys: tuple[int, ...]
    eperm: tuple[int, ...]
    x32: bool


ARCHES = {
    "x86_64": Arch(AUDIT_ARCH_X86_64, (
        Rule(2, mode=2, flags=1),     # open
        Rule(85, mode=1),             # creat
        Rule(133, mode=1),            # mknod
        Rule(90, mode=1),             # chmod
        Rule(91, mode=1),             # fchmod
        Rule(257, mode=3, flags=2),   # openat
        Rule(259, mode=2),            # mknodat
        Rule(268, mode=2),            # fchmodat
        Rule(452, mode=2),            # fchmodat2
    ), enosys=(437, 425), eperm=(41,), x32=True),  # openat2, io_uring_setup; socket
    "aarch64": Arch(AUDIT_ARCH_AARCH64, (
        Rule(56, mode=3, flags=2),    # openat
        Rule(33, mode=2),             # mknodat
        Rule(52, mode=1),             # fchmod
        Rule(53, mode=2),             # fchmodat
        Rule(452, mode=2),            # fchmodat2
    ), enosys=(437, 425), eperm=(198,), x32=False),
}


def _arg(i: int) -> int:
    """Offset of syscall argument ``i``'s low 32 bits in struct seccomp_data (little-endian)."""
    return 16 + 8 * i


Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, k


def program(arch: Arch) -> list[Instruction]:
    """The filter: another ABI, the x32 ABI, the calls in ``arch.eperm`` and a setuid mode get
    EPERM; the calls in ``arch.enosys`` ENOSYS; everything else is allowed."""
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    # Instructions whose jumps may name a label, and labels (strings) where they point.
    code: list[str | tuple[int, int | str, int | str, int]] = [
        (BPF_LD_W_ABS, 0, 0, OFFSET_ARCH), (BPF_JEQ_K, 0, "deny", arch.audit), (BPF_LD_W_ABS, 0, 0, OFFSET_NR)]
    if arch.x32:
        code.append((BPF_JGE_K, "deny", 0, X32_SYSCALL_BIT))
    code += [(BPF_JEQ_K, "enosys", 0, nr) for nr in arch.enosys]
    code += [(BPF_JEQ_K, "deny", 0, nr) for nr in arch.eperm]
    for i, rule in enumerate(arch.mode_rules):
        code.append((BPF_JEQ_K, 0, f"after{i}", rule.nr))
        if rule.flags >= 0:
            code += [(BPF_LD_W_ABS, 0, 0, _arg(rule.flags)), (BPF_JSET_K, 0, "allow", O_CREATING)]
        code += [(BPF_LD_W_ABS, 0, 0, _arg(rule.mode)), (BPF_JSET_K, "deny", "allow", S_ISUID), f"after{i}"]
    code += ["allow", (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), "deny", (BPF_RET_K, 0, 0, deny),
             "enosys", (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS)]
    return _resolve(code)


def _resolve(code: list[str | tuple[int, int | str, int | str, int]]) -> list[Instruction]:
    """Labels in jumps turned into the forward offsets BPF wants."""
    where: dict[str, int] = {}
    n = 0
    for item in code:
        if isinstance(item, str):
            where[item] = n
        else:
            n += 1
    out: list[Instruction] = []
    for item in code:
        if isinstance(item, str):
            continue
        op, jt, jf, k = item
        here = len(out)
        jt = where[jt] - here - 1 if isinstance(jt, str) else jt
        jf = where[jf] - here - 1 if isinstance(jf, str) else jf
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError("seccomp program too long for its jumps")
        out.append((op, jt, jf, k))
    return out


def qemu_gid() -> int:
    """The group QEMU runs in: the kernel's overflow group (65534, "nogroup" on Debian), which owns nothing."""
    value = read_value("/proc/sys/kernel/overflowgid")
    return int(value) if value.isdigit() else 65534


def cap_mask(caps: frozenset[int]) -> int:
    """The capability set as the kernel's bit mask (as /proc/PID/status shows it)."""
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    value = read_value("/proc/sys/kernel/cap_last_cap")
    return int(value) if value.isdigit() else 40


# What runs between fork and exec: system calls only, errors raised as OSError.

_libc = ctypes.CDLL(None, use_errno=True)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, *args: int) -> int:
    return _libc.prctl(ctypes.c_int(option), *(ctypes.c_ulong(a) for a in args))


class Confinement:
    """Everything prepared in the parent (the filter built, the capability set computed), so that
    :meth:`apply`, run in the child, only makes system calls."""

    def __init__(self, keep: frozenset[int] = KEEP, machine: str = "", gid: int | None = None,
                 view: int = -1, no_thp: bool = False) -> None:
        arch = ARCHES.get(machine or platform.machine())
        if arch is None:
            raise OSError(errno.ENOTSUP, f"no seccomp filter for {machine or platform.machine()}")
        prog = program(arch)
        self._filters = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
        self._fprog = _SockFprog(len(prog), self._filters)
        self._gid = qemu_gid() if gid is None else gid
        self.view = view  # a Landlock ruleset fd, or -1
        # Under TCG, QEMU gets no transparent huge pages (kept across exec): it madvises its code
        # cache and anonymous guest RAM huge, which rounds each up in 2 MiB steps and keeps KSM from
        # merging their pages until it splits them; measured here, 4 MiB less PSS per idle clone
        # (code cache 34 -> 32 MiB, heap 12 -> 10 MiB) and no slower guest code. Under KVM huge
        # pages back a cold-booted guest's RAM in the EPT, which is worth their cost.
        self.no_thp = no_thp
        self._parent = os.getpid()
        self._drop = tuple(c for c in range(last_cap() + 1) if c not in keep)
        mask = cap_mask(keep)
        self._header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
        self._data = (_CapData * 2)(_CapData(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                                    _CapData(mask >> 32, mask >> 32, 0))

    def apply(self) -> None:
        """In the child before exec: the group, no new privileges, the file view, the filter, the
        capabilities (the others need some of those it drops), then death with the parent."""
        if self.no_thp:
            _check(_prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0), "prctl(PR_SET_THP_DISABLE)")
        os.setgroups([])
        os.setresgid(self._gid, self._gid, self._gid)
        _check(_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if self.view >= 0:
            file_view.restrict_self(self.view)
        _check(_prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog)), "seccomp")
        for cap in self._drop:  # the bounding set first: it needs CAP_SETPCAP, dropped by capset below
            if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
                _check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")
        _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
        _check(_libc.capset(ctypes.byref(self._header), self._data), "capset")
        # Last: a change of credentials (the group, the capabilities) clears the parent-death signal.
        _check(_prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != self._parent:  # it died before that: so does QEMU, before it runs
            os.kill(os.getpid(), signal.SIGKILL)
