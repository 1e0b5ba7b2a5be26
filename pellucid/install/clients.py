"""The engines pellucid plugs into, and the operations common to them."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from dataclasses import dataclass

from . import InstallError, files

NAMES = ("docker", "containerd", "crio", "podman")


@dataclass
class Status:
    client: str
    found: str  # the executable or config file that shows the client is here, "" if none
    config: str  # where the runtime was looked for
    configured: bool
    default: bool


def module(name: str):
    if name not in NAMES:
        raise InstallError(f"unknown client {name!r}: one of {', '.join(NAMES)}")
    return importlib.import_module(f"{__package__}.{name}")


def pellucid_executable() -> str:
    """The path the engines should run: this command as invoked (a stable link such as
    /usr/local/bin/pellucid is kept, not resolved), else `pellucid` on PATH."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "pellucid" and os.access(argv0, os.X_OK):
        return os.path.abspath(argv0)
    found = shutil.which("pellucid")
    if not found:
        raise InstallError("cannot tell where the pellucid executable is: give it with --runtime-path")
    return os.path.abspath(found)


def install(name: str, path: str = "", executable: str = "", default: bool = False,
            dry_run: bool = False) -> files.Outcome:
    mod = module(name)
    path = path or mod.DEFAULT_PATH
    executable = executable or pellucid_executable()
    if not os.path.isabs(executable):
        raise InstallError(f"the runtime path must be absolute: {executable}")
    return files.update(path, lambda text: mod.install(text, executable, default, path), dry_run)


def uninstall(name: str, path: str = "", dry_run: bool = False) -> files.Outcome:
    mod = module(name)
    path = path or mod.DEFAULT_PATH
    return files.update(path, lambda text: mod.uninstall(text, path), dry_run)


def status(name: str) -> Status:
    mod = module(name)
    found = next((p for p in map(shutil.which, mod.EXECUTABLES) if p), "")
    found = found or next((p for p in mod.DETECT_FILES if os.path.exists(p)), "")
    configured, default = mod.status()
    return Status(name, found, mod.STATUS_FROM, configured, default)


def present() -> list[Status]:
    """The status of every client found on this host."""
    return [s for s in map(status, NAMES) if s.found]


def describe(s: Status) -> str:
    if not s.configured:
        return f"{s.found} found; no pellucid runtime in {s.config} (`pellucid install {s.client}`)"
    return f"{s.found} found; pellucid runtime in {s.config}" + (", the default" if s.default else "")
