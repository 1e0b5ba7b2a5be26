"""Bounded reads of what /proc says about a process's memory: smaps_rollup, each mapping of
smaps, the command line, the parent and start time. Rooted at ``root`` so that tests give it a
directory of their own. A process that is gone reads as None or empty, never as an error."""

from __future__ import annotations

import os

MAX_ROLLUP = 64 << 10
MAX_SMAPS = 32 << 20  # QEMU has a few hundred mappings, about 1 KiB each
MAX_MAPS = 4 << 20
MAX_CMDLINE = 64 << 10
MAX_PROCS = 1 << 20
KiB = 1024


class Mapping:
    """One mapping of smaps: its size, permissions, path ("" if anonymous; " (deleted)" dropped)
    and its fields in bytes (Rss, Pss, Anonymous, AnonHugePages, ...)."""

    __slots__ = ("size", "perms", "path", "fields")

    def __init__(self, size: int, perms: str, path: str, fields: dict[str, int]) -> None:
        self.size, self.perms, self.path, self.fields = size, perms, path, fields

    def get(self, field: str) -> int:
        return self.fields.get(field, 0)


class Proc:
    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def _read(self, pid: int | str, name: str, limit: int) -> bytes | None:
        try:
            with open(os.path.join(self.root, str(pid), name), "rb") as f:
                return f.read(limit)
        except OSError:  # gone, or not ours to read
            return None

    def stat(self, pid: int) -> tuple[int, int] | None:
        """(parent pid, start time in clock ticks) of ``pid``; None if there is none."""
        data = self._read(pid, "stat", 4096)
        if data is None:
            return None
        fields = data.rpartition(b")")[2].split()  # the command name may hold spaces and ')'
        try:
            return int(fields[1]), int(fields[19])
        except (IndexError, ValueError):
            return None

    def cmdline(self, pid: int) -> list[str]:
        data = self._read(pid, "cmdline", MAX_CMDLINE) or b""
        return [os.fsdecode(a) for a in data.split(b"\0")[:-1]]

    def rollup(self, pid: int) -> dict[str, int] | None:
        """smaps_rollup's fields in bytes."""
        data = self._read(pid, "smaps_rollup", MAX_ROLLUP)
        if data is None:
            return None
        out = {}
        for line in data.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB" and parts[1].isdigit():
                out[parts[0].rstrip(":")] = int(parts[1]) * KiB
        return out

    def mappings(self, pid: int) -> list[Mapping]:
        data = self._read(pid, "smaps", MAX_SMAPS)
        return parse_smaps(data.decode(errors="replace")) if data else []

    def maps_paths(self, pid: int) -> set[str]:
        """The paths mapped by ``pid`` (from maps, far cheaper than smaps)."""
        data = self._read(pid, "maps", MAX_MAPS)
        if not data:
            return set()
        paths = set()
        for line in data.decode(errors="replace").splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6:
                paths.add(_path(parts[5]))
        return paths

    def pids(self) -> list[int]:
        try:
            return [int(n) for n in os.listdir(self.root) if n.isdigit()]
        except OSError:
            return []


def _path(field: str) -> str:
    field = field.strip()
    return field[:-len(" (deleted)")] if field.endswith(" (deleted)") else field


def parse_smaps(text: str) -> list[Mapping]:
    maps: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if not parts:
            continue
        if parts[0].endswith(":"):
            if maps and len(parts) == 3 and parts[2] == "kB" and parts[1].isdigit():
                maps[-1].fields[parts[0][:-1]] = int(parts[1]) * KiB
            continue
        lo, dash, hi = parts[0].partition("-")
        try:
            size = int(hi, 16) - int(lo, 16)
        except ValueError:
            continue
        if dash and len(parts) >= 5:
            maps.append(Mapping(size, parts[1], _path(parts[5]) if len(parts) == 6 else "", {}))
    return maps


def cgroup_procs(cgroup_dir: str) -> list[int]:
    """The pids in a cgroup directory (cgroup.procs), bounded."""
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "rb") as f:
            data = f.read(MAX_PROCS)
    except OSError:
        return []
    return [int(x) for x in data.split() if x.isdigit()]
