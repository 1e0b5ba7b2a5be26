"""PrivateService: the common part of every client helper (a private directory under /tmp, its log,
the cleanup that leaves the host as it was, and the list of what survived)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .cgroups import cgroup_dirs, remove_cgroup
from .commands import tail
from .mounts import mounts_under, unmount_all_under
from .network import delete_link, link_exists
from .processes import cmdline, kill_pids, pids_referencing


class PrivateService:
    """A private temp dir under /tmp, logs, and the common cleanup steps."""

    prefix = "pc-"

    # Paths outside our dir that the client creates itself when missing (e.g. dockerd's
    # /etc/docker/key.json, the shims' /run/containerd/s): removed again if we caused them.
    host_paths: tuple[str, ...] = ()
    # Cgroups (relative paths) the client creates as parents and never removes.
    cgroup_parents: tuple[str, ...] = ()

    def __enter__(self) -> Any:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        log = getattr(self, "log_path", None)
        if exc[0] is not None and self.dir is not None and log is not None:
            sys.stderr.write(f"--- {type(self).__name__} log ({log}) ---\n{tail(log)}\n")
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.bridges: list[str] = []
        self.cgroups: list[str] = []
        self._absent_host_paths: list[str] = []
        self._absent_cgroups: list[Path] = []

    def _make_dir(self) -> Path:
        self._absent_host_paths = [p for p in self.host_paths if not os.path.lexists(p)]
        self._absent_cgroups = [h / rel.strip("/") for rel in self.cgroup_parents
                                for h in Path("/sys/fs/cgroup").iterdir()
                                if (h / "cgroup.procs").exists() and not (h / rel.strip("/")).exists()]
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/tmp"))
        os.chmod(self.dir, 0o711)
        return self.dir

    def _new_bridge_name(self, tag: str) -> str:
        return f"pc{tag}{uuid.uuid4().hex[:8]}"  # <= 15 bytes (IFNAMSIZ)

    def _final_cleanup(self) -> None:
        """Kill anything that still names our dir, unmount, drop cgroups and bridges, remove the dir."""
        if self.dir is None:
            return
        kill_pids(pids_referencing(str(self.dir)), grace=2.0)
        for cg in self.cgroups:
            remove_cgroup(cg)
        unmount_all_under(self.dir)
        for name in self.bridges:
            delete_link(name)
        for cg in sorted(self._absent_cgroups, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                cg.rmdir()  # fails harmlessly if someone else's cgroups live in it
        for path in self._absent_host_paths:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    if not os.listdir(path) and mounts_under(path) == [path]:
                        subprocess.run(["umount", path], capture_output=True)  # CNI's /run/netns bind
                    os.rmdir(path)
                else:
                    os.unlink(path)
        for _ in range(3):
            try:
                shutil.rmtree(self.dir)
                break
            except FileNotFoundError:
                break
            except OSError:
                unmount_all_under(self.dir)
                time.sleep(0.2)

    def logs(self) -> list[Path]:
        """The logs that explain this client's failures (a test keeps them): none by default."""
        return []

    def leftovers(self) -> list[str]:
        """What of ours is still on the host: processes, mounts, the dir, bridges, cgroups."""
        if self.dir is None:
            return []
        out = [f"process {p}: {cmdline(p)}" for p in pids_referencing(str(self.dir))]
        out += [f"mount {m}" for m in mounts_under(self.dir)]
        if self.dir.exists():
            out.append(f"directory {self.dir}")
        out += [f"link {b}" for b in self.bridges if link_exists(b)]
        out += [f"cgroup {d}" for cg in self.cgroups for d in cgroup_dirs(cg)]
        return out


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for our paths
