"""The host binaries the harness drives, and a check that they are installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BUSYBOX = "/bin/busybox"
RUNC = shutil.which("runc") or "/usr/sbin/runc"
# The docker CLI from Debian's docker.io matches dockerd 20.10; /usr/local/bin/docker
# may be a much newer CLI.
DOCKER_CLI = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def need(*binaries: str) -> None:
    """The README's set-up installs every client: a missing one is a set-up defect, not a skip."""
    missing = [b for b in binaries if shutil.which(b) is None]
    assert not missing, f"not installed: {', '.join(missing)} (run scripts/setup host)"


def logging_runtime(path: Path, log: Path, runtime: str = RUNC) -> Path:
    """Write an executable at `path` that appends its argv to `log` and execs `runtime`."""
    path = Path(path)
    path.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {runtime} "$@"\n')
    path.chmod(0o755)
    return path


def configured_runtime(path: Path, runtime: str, config: Path) -> Path:
    """Write an executable at `path` that runs pellucid `runtime` with the configuration file `config`."""
    path = Path(path)
    path.write_text(f'#!/bin/sh\nPELLUCID_CONFIG={config} exec {runtime} "$@"\n')
    path.chmod(0o755)
    return path
