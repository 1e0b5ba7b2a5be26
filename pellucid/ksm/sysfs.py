"""Reading and writing the kernel's KSM files (/sys/kernel/mm/ksm), and what /proc tells about
the host's anonymous memory and pellucid's QEMU processes."""

from __future__ import annotations

import os
import re

from ..errors import PellucidError

DEFAULT_SYSFS = "/sys/kernel/mm/ksm"

_VALUE = {"advisor_mode": re.compile(r"none|scan-time")}
_NUMBER = re.compile(r"[0-9]{1,12}")


class KsmError(PellucidError):
    """A KSM file could not be read or written, or the throttler's record is unusable."""


def valid(key: str, value: str) -> bool:
    """Whether ``value`` may be written to KSM file ``key`` (values from a record are checked)."""
    return bool((_VALUE.get(key) or _NUMBER).fullmatch(value))


class KsmSysfs:
    """The KSM directory of sysfs, or a directory of plain files standing for it in tests."""

    def __init__(self, root: str = DEFAULT_SYSFS) -> None:
        self.root = root

    def present(self) -> bool:
        return os.path.isfile(os.path.join(self.root, "run"))

    def has_advisor(self) -> bool:
        return os.path.isfile(os.path.join(self.root, "advisor_mode"))

    def has(self, key: str) -> bool:
        return os.path.isfile(os.path.join(self.root, key))

    def read(self, key: str) -> str:
        """A file's value; for a choice like advisor_mode's ``[none] scan-time``, the chosen one."""
        path = os.path.join(self.root, key)
        try:
            with open(path) as f:
                text = f.read(4096).strip()
        except OSError as err:
            raise KsmError(f"cannot read {path}: {err.strerror}") from None
        chosen = re.search(r"\[([^]]*)\]", text)
        return chosen.group(1) if chosen else text

    def read_int(self, key: str) -> int:
        value = self.read(key)
        if not _NUMBER.fullmatch(value):
            raise KsmError(f"{os.path.join(self.root, key)}: not a number: {value[:40]!r}")
        return int(value)

    def write(self, key: str, value: str) -> None:
        path = os.path.join(self.root, key)
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as err:
            raise KsmError(f"cannot write {value} to {path}: {err.strerror}") from None

    def snapshot(self, keys: tuple[str, ...]) -> dict[str, str]:
        """The present values of those of ``keys`` this kernel has."""
        return {key: self.read(key) for key in keys if self.has(key)}

    def apply(self, values: list[tuple[str, str]]) -> list[str]:
        """Writes each value that differs from the file's, in order; returns the errors (every
        write is tried, so that a restore does as much as it can)."""
        errors = []
        for key, value in values:
            try:
                if self.read(key) != value:
                    self.write(key, value)
            except KsmError as err:
                errors.append(str(err))
        return errors


def anon_pages(proc: str = "/proc") -> int:
    """The host's anonymous memory in pages (AnonPages of /proc/meminfo); 0 if unknown."""
    try:
        with open(os.path.join(proc, "meminfo")) as f:
            for line in f:
                if line.startswith("AnonPages:"):
                    return int(line.split()[1]) * 1024 // os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pellucid_vms(proc: str = "/proc") -> frozenset[int]:
    """Pids of pellucid's QEMU processes: a QEMU whose ``-name`` is pellucid or pellucid-*."""
    pids = set()
    try:
        entries = os.listdir(proc)
    except OSError:
        return frozenset()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "comm"), "rb") as f:
                if not f.read(64).startswith(b"qemu"):
                    continue
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                argv = f.read(65536).split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if is_pellucid_qemu(argv):
            pids.add(int(entry))
    return frozenset(pids)


def is_pellucid_qemu(argv: list[bytes]) -> bool:
    for i, word in enumerate(argv[:-1]):
        if word == b"-name":
            name = argv[i + 1].split(b",")[0]
            return name == b"pellucid" or name.startswith(b"pellucid-")
    return False


def boot_id(proc: str = "/proc") -> str:
    try:
        with open(os.path.join(proc, "sys/kernel/random/boot_id")) as f:
            return f.read(64).strip()
    except OSError:
        return ""
