"""cgroups the clients leave: found under every hierarchy, emptied and removed."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .processes import kill_pids


def cgroup_dirs(rel: str) -> list[Path]:
    """The directories of cgroup `rel` (e.g. /pc-1234/abc) under every v1 hierarchy and v2."""
    rel = rel.strip("/")
    if not rel:
        return []
    base = Path("/sys/fs/cgroup")
    candidates = [base / rel] + [d / rel for d in base.iterdir() if d.is_dir()]
    return [c for c in candidates if c.is_dir() and (c / "cgroup.procs").exists()]


def remove_cgroup(rel: str) -> None:
    """Kill every process in cgroup `rel` (all hierarchies) and remove it, deepest first."""
    for top in cgroup_dirs(rel):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        pids: set[int] = set()
        for d in dirs + [top]:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        kill_pids(pids, grace=1.0)
        for d in dirs + [top]:
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
