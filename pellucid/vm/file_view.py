"""The host files QEMU may open: a Landlock ruleset, built in the parent, enforced in the child
before exec (pellucid.vm.confine) and inherited by QEMU.

QEMU sees its programs and libraries (read, execute), its kernel, root image and firmware (read),
the devices it uses (/dev/kvm and /dev/net/tun where they exist, /dev/null, /dev/urandom), and
reads and writes only its VM's directory, its 9p shares and its RAM file. Everything else on the
host cannot be opened, created, removed or renamed into; no TCP socket can be bound or connected
(Landlock ABI 4), and no signal sent outside (ABI 6). Landlock walks up the path of every open, so
the container's rootfs and volumes that pellucid binds into the share after QEMU started are
covered, each with its own host mount flags (a read-only volume stays read-only).

Why not a private mount namespace: those binds are made after QEMU starts (the VM boots before
the container's files are shared), and a read-only one is made read-only after it is bound. A
namespace of QEMU's own would receive them only by mount propagation, which copies a mount as it is
when bound (still writable): QEMU's copy of a read-only volume would stay writable.

Landlock restricts opening and making files, not metadata calls on a path (stat, chmod, chown,
setxattr): those stay bounded by QEMU's capabilities and the seccomp filter.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from .qemu_args import VMSpec

SYS_LANDLOCK_CREATE_RULESET = 444  # the same numbers on x86-64 and arm64
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

#: what each ABI can restrict on files (cumulative)
FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
#: rights that apply to a file (a rule on a non-directory may hold only these)
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

PROGRAM = EXECUTE | READ_FILE | READ_DIR
READ = READ_FILE | READ_DIR
DEVICE = READ_FILE | WRITE_FILE | IOCTL_DEV
#: a directory QEMU reads and writes: everything but device nodes (CAP_MKNOD is gone too)
READ_WRITE = (READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
              | MAKE_SYM | REFER | TRUNCATE)

#: programs and libraries (those of them that exist; a merged-/usr host's /lib is a link into /usr)
PROGRAM_TREES = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
LIBRARY_FILES = ("/etc/ld.so.cache",)
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/kvm", "/dev/net/tun")


@dataclass(frozen=True)
class Rule:
    path: str
    access: int


def rules(spec: VMSpec, workdir: str) -> list[Rule]:
    """What the QEMU of ``spec``, working in ``workdir``, may open (paths that may not exist: the caller skips them)."""
    out = [Rule(p, PROGRAM) for p in PROGRAM_TREES]
    qemu = os.path.realpath(spec.qemu)
    if not qemu.startswith("/usr/"):  # a QEMU installed elsewhere: its prefix has its modules and data
        out.append(Rule(os.path.dirname(os.path.dirname(qemu)), PROGRAM))
    out += [Rule(p, READ_FILE) for p in (*LIBRARY_FILES, spec.kernel, spec.image, spec.firmware) if p]
    out += [Rule(p, DEVICE) for p in DEVICES]
    out.append(Rule(workdir, READ_WRITE))
    out += [Rule(s.path, READ if s.readonly else READ_WRITE) for s in spec.shares]
    if spec.ram_file:
        out.append(Rule(spec.ram_file, READ_FILE | WRITE_FILE | TRUNCATE))
    if spec.console_file:
        out.append(Rule(os.path.dirname(spec.console_file), READ_WRITE))
    return out


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 without Landlock."""
    version = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(version, 0)


def handled(abi: int) -> tuple[int, int, int]:
    """(files, network, scopes) restricted under Landlock ``abi``."""
    fs = FS_BY_ABI[min(abi, 5)] if abi >= 1 else 0
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return fs, net, scoped


_libc = ctypes.CDLL(None, use_errno=True)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def ruleset(spec: VMSpec, workdir: str) -> int:
    """A Landlock ruleset fd for QEMU (the caller closes it), or -1 where the kernel has no Landlock."""
    abi = abi_version()
    if abi < 1:
        return -1
    fs, net, scoped = handled(abi)
    attr = _RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    fd = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        for rule in rules(spec, workdir):
            _add(fd, rule, fs)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _add(ruleset_fd: int, rule: Rule, handled_fs: int) -> None:
    try:
        target = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        access = rule.access & handled_fs
        if not os.path.isdir(f"/proc/self/fd/{target}"):
            access &= FILE_RIGHTS
        attr = _PathBeneath(access, target)
        if _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(attr),
                         ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_add_rule {rule.path}: {os.strerror(err)}")
    finally:
        os.close(target)


def restrict_self(ruleset_fd: int) -> None:
    """In the child, after no_new_privs: from here on this process and what it execs see only the ruleset's files."""
    if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, ctypes.c_uint32(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
